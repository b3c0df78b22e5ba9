import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import path from "node:path";
import { ModelError, errorMessage } from "../../common/errors.js";
import { ONNX_MODEL_PATH } from "./build-model.js";
import { WEIGHT_FORMATS, weightFormatOf, type WeightFormat } from "./gpt2-graph.js";
import { ATTENTION_MASK, INPUT_IDS, KV_PARTS, kvName, LOGITS, NEW_KEY_VALUES, PAST, parsePastName, POSITION_IDS, PRESENT, STEP_INPUTS, USE_CACHE_BRANCH } from "./model-io.js";
import { gpt2ParameterCount } from "./gpt2-weights.js";
import { readOnnxSignature, type OnnxTensorInfo } from "./onnx-signature.js";

/** What the engine needs to know about a validated model folder. */
export interface ModelInfo {
  /** Folder name, which is the model's name in jobs and config. */
  name: string;
  /** Absolute folder path. */
  dir: string;
  onnxPath: string;
  nLayer: number;
  nHead: number;
  nEmbd: number;
  headDim: number;
  nPositions: number;
  vocabSize: number;
  eosTokenId: number;
  /** Parameter count implied by config.json (tied lm_head). */
  parameters: number;
  /** Bytes of all files in the folder. */
  sizeBytes: number;
  /** Graph input names in file order (e.g. with or without position_ids / use_cache_branch). */
  inputNames: string[];
  outputNames: string[];
  /** Element type of past_key_values (real exports may be float16). */
  kvType: "float32" | "float16";
  /** How the matmul weights are stored: config.json `aitbc.weights` (our builds), else "float32". */
  weights: WeightFormat;
  /** True when the graph's logits are [B,1,V], for the last position only (our builds); false for optimum's [B,S,V]. */
  lastLogitsOnly: boolean;
  /** True when the graph also outputs new_key_values.{i}.key|value, each run's own entries (our builds). */
  newKeyValues: boolean;
}

/** Files every model folder must have; generation_config.json is optional (defaults apply). */
export const REQUIRED_MODEL_FILES = ["config.json", "tokenizer.json", "tokenizer_config.json", ONNX_MODEL_PATH] as const;

const ELEM_FLOAT = 1;
const ELEM_INT64 = 7;
const ELEM_BOOL = 9;
const ELEM_FLOAT16 = 10;

/**
 * Validates a model folder in Hugging Face optimum layout and returns its shape. Refuses a
 * bad one with a ModelError whose message names the problem and whose details name the file,
 * key or tensor: missing files, unreadable JSON, a config that is not GPT-2, or graph inputs
 * and outputs whose names or shapes disagree with config.json.
 */
export function loadModelInfo(dir: string): ModelInfo {
  const abs = path.resolve(dir);
  if (!existsSync(abs) || !statSync(abs).isDirectory()) throw new ModelError("model_not_found", "the model folder does not exist", { dir: abs });
  for (const file of REQUIRED_MODEL_FILES) {
    if (!existsSync(path.join(abs, file))) throw new ModelError("model_file_missing", `the model folder lacks ${file}`, { dir: abs, file });
  }
  const config = readJson(abs, "config.json");
  const tokConfig = readJson(abs, "tokenizer_config.json");
  readJson(abs, "tokenizer.json");
  if (existsSync(path.join(abs, "generation_config.json"))) readJson(abs, "generation_config.json");

  if (config.model_type !== "gpt2") throw configError(abs, "model_type", 'config.json model_type must be "gpt2"');
  const int = (key: string, fallbackKey?: string): number => {
    const v = config[key] ?? (fallbackKey === undefined ? undefined : config[fallbackKey]);
    if (typeof v !== "number" || !Number.isInteger(v) || v < 0) throw configError(abs, key, `config.json ${key} must be a non-negative integer`);
    return v;
  };
  const nLayer = int("n_layer");
  const nHead = int("n_head");
  const nEmbd = int("n_embd");
  const nPositions = int("n_positions", "n_ctx");
  const vocabSize = int("vocab_size");
  const eosTokenId = int("eos_token_id");
  if (nLayer < 1 || nHead < 1 || nEmbd % nHead !== 0) throw configError(abs, "n_embd", "config.json n_embd must be a multiple of n_head");
  if (eosTokenId >= vocabSize) throw configError(abs, "eos_token_id", "config.json eos_token_id is outside the vocabulary");
  if (typeof tokConfig.model_max_length !== "number") {
    throw new ModelError("model_config_invalid", "tokenizer_config.json needs model_max_length", { dir: abs, file: "tokenizer_config.json", key: "model_max_length" });
  }
  const headDim = nEmbd / nHead;
  const ours = config.aitbc;
  const named = typeof ours === "object" && ours !== null && "weights" in ours ? ours.weights : "float32";
  const weights = weightFormatOf(named);
  if (weights === undefined) throw configError(abs, "aitbc.weights", `config.json aitbc.weights must be one of ${WEIGHT_FORMATS.join(", ")}`);

  const onnxPath = path.join(abs, ONNX_MODEL_PATH);
  let sig;
  try {
    sig = readOnnxSignature(onnxPath);
  } catch (err) {
    throw new ModelError("model_onnx_invalid", "the ONNX file cannot be read", { dir: abs, file: ONNX_MODEL_PATH, cause: errorMessage(err) });
  }
  const kvType = checkSignature(abs, sig.inputs, sig.outputs, { nLayer, nHead, headDim, vocabSize });

  return {
    name: path.basename(abs),
    dir: abs,
    onnxPath,
    nLayer,
    nHead,
    nEmbd,
    headDim,
    nPositions,
    vocabSize,
    eosTokenId,
    parameters: gpt2ParameterCount({ nLayer, nHead, nEmbd, nPositions, vocabSize, bosTokenId: eosTokenId, eosTokenId }),
    sizeBytes: folderSize(abs),
    inputNames: sig.inputs.map((i) => i.name),
    outputNames: sig.outputs.map((o) => o.name),
    kvType,
    weights,
    lastLogitsOnly: sig.outputs.find((o) => o.name === LOGITS)?.dims[1] === 1,
    newKeyValues: sig.outputs.some((o) => o.name === kvName(NEW_KEY_VALUES, 0, "key")),
  };
}

function checkSignature(
  dir: string,
  inputs: OnnxTensorInfo[],
  outputs: OnnxTensorInfo[],
  s: { nLayer: number; nHead: number; headDim: number; vocabSize: number },
): "float32" | "float16" {
  const mismatch = (message: string, tensor: string): ModelError => new ModelError("model_io_mismatch", message, { dir, file: ONNX_MODEL_PATH, tensor });
  const ins = new Map(inputs.map((t) => [t.name, t]));
  const outs = new Map(outputs.map((t) => [t.name, t]));
  const need = (map: Map<string, OnnxTensorInfo>, name: string, kind: string): OnnxTensorInfo => {
    const t = map.get(name);
    if (t === undefined) throw mismatch(`the ONNX graph has no ${kind} ${name}`, name);
    return t;
  };
  const expect = (t: OnnxTensorInfo, types: number[], rank: number, fixed: Record<number, number>): void => {
    if (!types.includes(t.elemType)) throw mismatch(`${t.name} has the wrong element type`, t.name);
    if (t.dims.length !== rank) throw mismatch(`${t.name} has rank ${t.dims.length}, expected ${rank}`, t.name);
    for (const [axis, size] of Object.entries(fixed)) {
      const d = t.dims[Number(axis)];
      if (typeof d === "number" && d !== size) throw mismatch(`${t.name} dimension ${axis} is ${d}, config.json implies ${size}`, t.name);
    }
  };

  expect(need(ins, INPUT_IDS, "input"), [ELEM_INT64], 2, {});
  expect(need(ins, ATTENTION_MASK, "input"), [ELEM_INT64], 2, {});
  if (ins.has(POSITION_IDS)) expect(ins.get(POSITION_IDS) as OnnxTensorInfo, [ELEM_INT64], 2, {});
  if (ins.has(USE_CACHE_BRANCH)) expect(ins.get(USE_CACHE_BRANCH) as OnnxTensorInfo, [ELEM_BOOL], 1, {});
  expect(need(outs, LOGITS, "output"), [ELEM_FLOAT, ELEM_FLOAT16], 3, { 2: s.vocabSize });

  const kvShape = { 1: s.nHead, 3: s.headDim };
  // Optional (our builds), but then for every layer.
  const hasNewKeyValues = outs.has(kvName(NEW_KEY_VALUES, 0, "key"));
  const firstPast = need(ins, kvName(PAST, 0, "key"), "input");
  const kvElem = firstPast.elemType;
  for (let i = 0; i < s.nLayer; i++) {
    for (const part of KV_PARTS) {
      const past = need(ins, kvName(PAST, i, part), "input");
      expect(past, [kvElem === ELEM_FLOAT16 ? ELEM_FLOAT16 : ELEM_FLOAT], 4, kvShape);
      const present = need(outs, kvName(PRESENT, i, part), "output");
      expect(present, [past.elemType], 4, kvShape);
      if (hasNewKeyValues) expect(need(outs, kvName(NEW_KEY_VALUES, i, part), "output"), [past.elemType], 4, kvShape);
    }
  }
  const known = new Set(STEP_INPUTS);
  for (const t of inputs) {
    const past = parsePastName(t.name);
    if (past ? past.layer >= s.nLayer : !known.has(t.name)) throw mismatch(`the ONNX graph has an unexpected input ${t.name} (config.json n_layer ${s.nLayer})`, t.name);
  }
  return kvElem === ELEM_FLOAT16 ? "float16" : "float32";
}

function readJson(dir: string, file: string): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(readFileSync(path.join(dir, file), "utf8"));
  } catch (err) {
    throw new ModelError("model_config_invalid", `${file} is not valid JSON`, { dir, file, cause: errorMessage(err) });
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) throw new ModelError("model_config_invalid", `${file} is not a JSON object`, { dir, file });
  return value as Record<string, unknown>;
}

function configError(dir: string, key: string, message: string): ModelError {
  return new ModelError("model_config_invalid", message, { dir, file: "config.json", key });
}

function folderSize(dir: string): number {
  let total = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, entry.name);
    if (entry.isDirectory()) total += folderSize(p);
    else if (entry.isFile()) total += statSync(p).size;
  }
  return total;
}
