/**
 * Our float32 GPT-2 export as a GGUF file for llama.cpp (architecture "gpt2"), F32 or Q8_0, so
 * that the inference bench runs llama.cpp on exactly our weights. The tensors are the ONNX
 * initializers, which keep Hugging Face's state-dict names; the mapping follows llama.cpp's
 * convert_hf_to_gguf.py for GPT2LMHeadModel: Conv1D weights ([in, out] in GPT-2) are
 * transposed to [out, in], the tied lm_head is written out as `output` (a copy of wte), and
 * the tokenizer's vocabulary and merges come from the folder's tokenizer.json. With Q8_0 every
 * matrix but position_embd is quantized; norms, biases and position_embd stay F32, as the
 * converter leaves them.
 *
 * Files are cached under `<modelsDir>/gguf/`, named after the source ONNX file's size and
 * mtime, so a rebuilt model gets a fresh conversion.
 */
import { existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, statSync } from "node:fs";
import path from "node:path";
import { ONNX_MODEL_PATH } from "../src/inference/models/build-model.js";
import { floatsOf, readOnnxModel, type ReadInitializer } from "../src/inference/models/onnx-reader.js";
import { GgufWriter, type GgmlTypeName } from "./gguf-writer.js";

/** llama_ftype of the whole file: ALL_F32 or MOSTLY_Q8_0. */
const FILE_TYPE: Record<GgmlTypeName, number> = { F32: 0, Q8_0: 7 };
/** llama_token_type: NORMAL, CONTROL (special added tokens). */
const TOKEN_NORMAL = 1;
const TOKEN_CONTROL = 3;

interface HfConfig {
  n_layer: number;
  n_head: number;
  n_embd: number;
  n_positions: number;
  n_ctx?: number;
  layer_norm_epsilon?: number;
  bos_token_id: number;
  eos_token_id: number;
}

interface TokenizerJson {
  model: { vocab: Record<string, number>; merges: (string | [string, string])[] };
  added_tokens?: { id: number; content: string; special?: boolean }[];
}

/** The GGUF file of `<modelsDir>/<model>` in `type`, converted now unless a conversion of the same source is cached. */
export function ensureGguf(modelsDir: string, model: string, type: GgmlTypeName): string {
  const dir = path.join(modelsDir, model);
  const onnx = path.join(dir, ONNX_MODEL_PATH);
  const st = statSync(onnx);
  const outDir = path.join(modelsDir, "gguf");
  const prefix = `${model}.${type}.`;
  const file = path.join(outDir, `${prefix}${st.size}-${Math.round(st.mtimeMs)}.gguf`);
  if (existsSync(file)) return file;
  mkdirSync(outDir, { recursive: true });
  for (const old of readdirSync(outDir)) if (old.startsWith(prefix)) rmSync(path.join(outDir, old));
  process.stderr.write(`converting ${model} to GGUF ${type} (once)…\n`);
  const tmp = `${file}.tmp`;
  exportGguf(dir, type).write(tmp);
  renameSync(tmp, file);
  return file;
}

/** The GGUF of a model folder (config.json, tokenizer.json and a float32 ONNX export). */
export function exportGguf(dir: string, type: GgmlTypeName): GgufWriter {
  const config = JSON.parse(readFileSync(path.join(dir, "config.json"), "utf8")) as HfConfig;
  const inits = readOnnxModel(path.join(dir, ONNX_MODEL_PATH)).initializers;
  const get = (name: string): ReadInitializer => {
    const t = inits.get(name);
    if (t === undefined) throw new Error(`the ONNX file has no initializer ${name}`);
    return t;
  };
  const w = new GgufWriter();
  w.set("general.architecture", { type: "string", value: "gpt2" })
    .set("general.name", { type: "string", value: path.basename(dir) })
    .set("general.file_type", { type: "u32", value: FILE_TYPE[type] })
    .set("gpt2.context_length", { type: "u32", value: config.n_ctx ?? config.n_positions })
    .set("gpt2.embedding_length", { type: "u32", value: config.n_embd })
    .set("gpt2.feed_forward_length", { type: "u32", value: 4 * config.n_embd })
    .set("gpt2.block_count", { type: "u32", value: config.n_layer })
    .set("gpt2.attention.head_count", { type: "u32", value: config.n_head })
    .set("gpt2.attention.layer_norm_epsilon", { type: "f32", value: config.layer_norm_epsilon ?? 1e-5 });
  addTokenizer(w, dir, config);

  const matrix = type; // 2-D weights in the file's type; vectors and position_embd in F32
  /** A tensor as stored in ONNX (Hugging Face's shape). */
  const plain = (to: string, from: string, as: GgmlTypeName): void => {
    const t = get(from);
    w.addTensor(to, t.dims, floatsOf(t), as);
  };
  /** A Conv1D weight [in, out], written [out, in]. */
  const conv1d = (to: string, from: string): void => {
    const t = get(from);
    const [rows, cols] = t.dims as [number, number];
    w.addTensor(to, [cols, rows], transpose(floatsOf(t), rows, cols), matrix);
  };
  plain("token_embd.weight", "transformer.wte.weight", matrix);
  plain("position_embd.weight", "transformer.wpe.weight", "F32");
  for (let i = 0; i < config.n_layer; i++) {
    const hf = `transformer.h.${i}`;
    const blk = `blk.${i}`;
    plain(`${blk}.attn_norm.weight`, `${hf}.ln_1.weight`, "F32");
    plain(`${blk}.attn_norm.bias`, `${hf}.ln_1.bias`, "F32");
    conv1d(`${blk}.attn_qkv.weight`, `${hf}.attn.c_attn.weight`);
    plain(`${blk}.attn_qkv.bias`, `${hf}.attn.c_attn.bias`, "F32");
    conv1d(`${blk}.attn_output.weight`, `${hf}.attn.c_proj.weight`);
    plain(`${blk}.attn_output.bias`, `${hf}.attn.c_proj.bias`, "F32");
    plain(`${blk}.ffn_norm.weight`, `${hf}.ln_2.weight`, "F32");
    plain(`${blk}.ffn_norm.bias`, `${hf}.ln_2.bias`, "F32");
    conv1d(`${blk}.ffn_up.weight`, `${hf}.mlp.c_fc.weight`);
    plain(`${blk}.ffn_up.bias`, `${hf}.mlp.c_fc.bias`, "F32");
    conv1d(`${blk}.ffn_down.weight`, `${hf}.mlp.c_proj.weight`);
    plain(`${blk}.ffn_down.bias`, `${hf}.mlp.c_proj.bias`, "F32");
  }
  plain("output_norm.weight", "transformer.ln_f.weight", "F32");
  plain("output_norm.bias", "transformer.ln_f.bias", "F32");
  // GPT-2 ties the lm_head to wte; an untied export would carry lm_head.weight.
  plain("output.weight", inits.has("lm_head.weight") ? "lm_head.weight" : "transformer.wte.weight", matrix);
  return w;
}

function transpose(values: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(values.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = values[r * cols + c]!;
  return out;
}

/** tokenizer.ggml.*: GPT-2 byte-level BPE, its tokens in id order, their types and the merges. */
function addTokenizer(w: GgufWriter, dir: string, config: HfConfig): void {
  const tok = JSON.parse(readFileSync(path.join(dir, "tokenizer.json"), "utf8")) as TokenizerJson;
  const byId: string[] = [];
  for (const [token, id] of Object.entries(tok.model.vocab)) byId[id] = token;
  const special = new Set<number>();
  for (const t of tok.added_tokens ?? []) {
    byId[t.id] = t.content;
    if (t.special === true) special.add(t.id);
  }
  const tokens = Array.from(byId, (t, id) => {
    if (t === undefined) throw new Error(`tokenizer.json has no token with id ${id}`);
    return t;
  });
  w.set("tokenizer.ggml.model", { type: "string", value: "gpt2" })
    .set("tokenizer.ggml.pre", { type: "string", value: "gpt-2" })
    .set("tokenizer.ggml.tokens", { type: "string[]", value: tokens })
    .set("tokenizer.ggml.token_type", { type: "i32[]", value: tokens.map((_, id) => (special.has(id) ? TOKEN_CONTROL : TOKEN_NORMAL)) })
    .set("tokenizer.ggml.merges", { type: "string[]", value: tok.model.merges.map((m) => (typeof m === "string" ? m : m.join(" "))) })
    .set("tokenizer.ggml.bos_token_id", { type: "u32", value: config.bos_token_id })
    .set("tokenizer.ggml.eos_token_id", { type: "u32", value: config.eos_token_id });
}
