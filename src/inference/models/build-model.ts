import { closeSync, mkdirSync, openSync, statSync, writeFileSync, writeSync } from "node:fs";
import path from "node:path";
import { packageVersion } from "../../common/package-info.js";
import { writeDirAtomically } from "./atomic-dir.js";
import { buildGpt2Graph, type GraphLayout, type Gpt2GraphOptions, type WeightFormat } from "./gpt2-graph.js";
import { GPT2_TOKENIZER_NOTICE, GPT2_TOKENIZER_NOTICE_FILE } from "./gpt2-notice.js";
import { GPT2_EOS_TOKEN, gpt2TokenizerJson } from "./gpt2-tokenizer-json.js";
import { gpt2ParameterCount, initGpt2Weights, type Gpt2Config } from "./gpt2-weights.js";
import { INT8_DEFAULTS } from "./quantize-int8.js";
import type { ModelRecipe } from "./recipes.js";
import type { ProtoWriter } from "./proto-writer.js";

/** Where an optimum export keeps the merged decoder, relative to the model folder. */
export const ONNX_MODEL_PATH = "onnx/decoder_model_merged.onnx";

export interface BuildOptions {
  /** Seed for the weights; the same seed gives byte-identical files. Default: the recipe's. */
  seed?: number;
  /** Replace an existing folder. Default false (refuses). */
  force?: boolean;
  /** How the matmul weights are stored (gpt2-graph.ts). Default "float32". */
  weights?: WeightFormat;
  /** The graph's outputs (gpt2-graph.ts). Default "aitbc". */
  layout?: GraphLayout;
}

export interface BuildResult {
  dir: string;
  seed: number;
  weights: WeightFormat;
  parameters: number;
  sizeBytes: number;
}

/**
 * Writes a Hugging Face optimum-style model folder for `recipe` into `outDir`, atomically:
 * config.json, generation_config.json, tokenizer.json (+ its licence notice),
 * tokenizer_config.json and onnx/decoder_model_merged.onnx.
 */
export async function buildModel(recipe: ModelRecipe, outDir: string, options: BuildOptions = {}): Promise<BuildResult> {
  const seed = options.seed ?? recipe.defaultSeed;
  const weights = options.weights ?? "float32";
  const dir = path.resolve(outDir);
  await writeDirAtomically(dir, options.force ?? false, (tmp) => {
    writeModelFiles(recipe, seed, { format: weights, layout: options.layout ?? "aitbc", float32Layers: INT8_DEFAULTS.float32Layers }, tmp);
    return Promise.resolve();
  });
  return { dir, seed, weights, parameters: gpt2ParameterCount(recipe.config), sizeBytes: folderBytes(dir) };
}

function writeModelFiles(recipe: ModelRecipe, seed: number, graphOptions: Required<Gpt2GraphOptions>, dir: string): void {
  const c = recipe.config;
  const json = (name: string, value: unknown): void => writeFileSync(path.join(dir, name), `${JSON.stringify(value, null, 2)}\n`);
  json("config.json", hfConfig(c, recipe.name, seed, graphOptions));
  json("generation_config.json", { _from_model_config: true, bos_token_id: c.bosTokenId, eos_token_id: c.eosTokenId });
  json("tokenizer_config.json", {
    add_prefix_space: false,
    bos_token: GPT2_EOS_TOKEN,
    eos_token: GPT2_EOS_TOKEN,
    unk_token: GPT2_EOS_TOKEN,
    // Decoding must give back exactly the text that was encoded.
    clean_up_tokenization_spaces: false,
    model_max_length: c.nPositions,
    tokenizer_class: "GPT2Tokenizer",
  });
  writeFileSync(path.join(dir, "tokenizer.json"), gpt2TokenizerJson());
  writeFileSync(path.join(dir, GPT2_TOKENIZER_NOTICE_FILE), GPT2_TOKENIZER_NOTICE);

  const graph = buildGpt2Graph(c, initGpt2Weights(c, recipe.init, seed), graphOptions);
  const onnxPath = path.join(dir, ONNX_MODEL_PATH);
  mkdirSync(path.dirname(onnxPath), { recursive: true });
  writeChunks(onnxPath, graph.encode({ name: "aitbc-miner", version: packageVersion() }));
}

/** config.json as transformers (and transformers.js) expect it for model_type gpt2. */
function hfConfig(c: Gpt2Config, name: string, seed: number, graph: Required<Gpt2GraphOptions>): Record<string, unknown> {
  return {
    _name_or_path: name,
    activation_function: "gelu_new",
    architectures: ["GPT2LMHeadModel"],
    attn_pdrop: 0.1,
    bos_token_id: c.bosTokenId,
    embd_pdrop: 0.1,
    eos_token_id: c.eosTokenId,
    initializer_range: 0.02,
    layer_norm_epsilon: 1e-5,
    model_type: "gpt2",
    n_ctx: c.nPositions,
    n_embd: c.nEmbd,
    n_head: c.nHead,
    n_inner: null,
    n_layer: c.nLayer,
    n_positions: c.nPositions,
    resid_pdrop: 0.1,
    scale_attn_weights: true,
    tie_word_embeddings: true,
    use_cache: true,
    vocab_size: c.vocabSize,
    // Float32 folders keep the key set they always had, so their config.json bytes do not change.
    aitbc: {
      recipe: name,
      seed,
      random_weights: true,
      ...(graph.format === "float32"
        ? {}
        : { weights: graph.format, int8: { block_size: INT8_DEFAULTS.blockSize, accuracy_level: INT8_DEFAULTS.accuracyLevel, float32_layers: graph.float32Layers } }),
    },
  };
}

/** Streams the encoded chunks to disk, gathering the many small ones into 1 MiB writes. */
export function writeChunks(file: string, message: ProtoWriter): void {
  const fd = openSync(file, "w");
  const buffer = new Uint8Array(1 << 20);
  let used = 0;
  const write = (bytes: Uint8Array): void => {
    let off = 0;
    while (off < bytes.length) off += writeSync(fd, bytes, off, bytes.length - off);
  };
  try {
    for (const part of message.parts) {
      if (used + part.length > buffer.length) {
        write(buffer.subarray(0, used));
        used = 0;
      }
      if (part.length >= buffer.length) write(part);
      else {
        buffer.set(part, used);
        used += part.length;
      }
    }
    write(buffer.subarray(0, used));
  } finally {
    closeSync(fd);
  }
}

function folderBytes(dir: string): number {
  const files = ["config.json", "generation_config.json", "tokenizer_config.json", "tokenizer.json", GPT2_TOKENIZER_NOTICE_FILE, ONNX_MODEL_PATH];
  return files.reduce((sum, f) => sum + statSync(path.join(dir, f)).size, 0);
}
