import { copyFileSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { ModelError, errorMessage } from "../../common/errors.js";
import { writeDirAtomically } from "./atomic-dir.js";
import { ONNX_MODEL_PATH, writeChunks } from "./build-model.js";
import { loadModelInfo } from "./model-info.js";
import { encodeInitializer, encodeNode, littleEndianBytes, MS_DOMAIN, OnnxType, type OnnxAttribute } from "./onnx-graph.js";
import { floatsOf, readOnnxModel, type ReadAttribute, type ReadGraph, type ReadInitializer, type ReadNode, type ReadOnnxModel } from "./onnx-reader.js";
import { rewriteOnnxModel, type OnnxEdit } from "./onnx-rewrite.js";
import type { ProtoWriter } from "./proto-writer.js";
import { gpt2LayerOf, INT8_DEFAULTS, int8BlockSize, quantizeInt8 } from "./quantize-int8.js";

export interface QuantizeOptions {
  /**
   * Rows per scale, a power of two from 16 to 256. A matmul whose inner dimension K it does not
   * divide gets the largest smaller one that does, as `models build --weights int8` does.
   * Default INT8_DEFAULTS.blockSize.
   */
  blockSize?: number;
  /** MatMulNBits' accuracy_level, 0 to 4 (quantize-int8.ts says what 4 does). Default INT8_DEFAULTS.accuracyLevel. */
  accuracyLevel?: number;
  /**
   * The first this many transformer blocks keep their float32 matmuls (quantize-int8.ts says
   * why 1), a matmul's block read from its weight's or its node's name (gpt2LayerOf); 0
   * quantizes every one. Default INT8_DEFAULTS.float32Layers.
   */
  float32Layers?: number;
}

export interface QuantizeModelOptions extends QuantizeOptions {
  /** Replace an existing output folder. Default false (refuses). */
  force?: boolean;
}

/** One matmul now run by MatMulNBits. */
export interface QuantizedMatMul {
  /** The node's name in the graph (MatMulNBits keeps it). */
  node: string;
  op: "MatMul" | "Gemm";
  /** The float32 initializer its weight came from. */
  weight: string;
  k: number;
  n: number;
  blockSize: number;
}

export interface QuantizeModelResult {
  dir: string;
  matmuls: QuantizedMatMul[];
  blockSize: number;
  accuracyLevel: number;
  float32Layers: number;
  /** The matmuls left float32 for float32Layers, by node name. */
  keptFloat32: string[];
  /** Bytes of the source folder and of the new one. */
  sizeBeforeBytes: number;
  sizeAfterBytes: number;
}

/**
 * Writes the int8 variant of a float32 GPT-2 model folder (optimum layout, ours or a real
 * export) into `outDir`, atomically: every top-level file copied, config.json marked
 * `aitbc.weights: "int8"` (what model-info reads), and the ONNX graph with each MatMul or
 * Gemm against a 2-D float32 initializer replaced by a MatMulNBits node (quantizeOnnxModel).
 * Refuses with a ModelError a folder that is not a valid model, is not float32, or has no
 * such matmul; the output is validated as a model folder before it is moved into place.
 */
export async function quantizeModel(sourceDir: string, outDir: string, options: QuantizeModelOptions = {}): Promise<QuantizeModelResult> {
  const info = loadModelInfo(sourceDir);
  const out = path.resolve(outDir);
  if (out === info.dir) throw new ModelError("model_exists", "the output folder is the model folder itself (name another with --out)", { dir: out });
  if (info.weights !== "float32" || info.kvType !== "float32") {
    throw new ModelError("model_not_float32", `the model is not a float32 export (its weights are ${info.weights}, its KV cache ${info.kvType})`, { dir: info.dir });
  }
  let model: ReadOnnxModel;
  try {
    model = readOnnxModel(info.onnxPath);
  } catch (err) {
    throw new ModelError("model_onnx_invalid", "the ONNX file cannot be read", { dir: info.dir, file: ONNX_MODEL_PATH, cause: errorMessage(err) });
  }
  const blockSize = options.blockSize ?? INT8_DEFAULTS.blockSize;
  const accuracyLevel = options.accuracyLevel ?? INT8_DEFAULTS.accuracyLevel;
  const float32Layers = options.float32Layers ?? INT8_DEFAULTS.float32Layers;
  const { proto, matmuls, keptFloat32 } = quantizeOnnxModel(model, { blockSize, accuracyLevel, float32Layers });
  if (matmuls.length === 0) {
    const why = keptFloat32.length === 0 ? "the ONNX graph has no MatMul or Gemm with a float32 weight to quantize" : `every matmul with a float32 weight is in the first ${float32Layers} layers, which stay float32`;
    throw new ModelError("model_not_quantizable", why, { dir: info.dir, file: ONNX_MODEL_PATH });
  }
  let sizeAfterBytes = 0;
  await writeDirAtomically(out, options.force ?? false, (tmp) => {
    for (const entry of readdirSync(info.dir, { withFileTypes: true })) {
      if (entry.isFile() && entry.name !== "config.json") copyFileSync(path.join(info.dir, entry.name), path.join(tmp, entry.name));
    }
    const config = JSON.parse(readFileSync(path.join(info.dir, "config.json"), "utf8")) as Record<string, unknown>;
    const ours = typeof config.aitbc === "object" && config.aitbc !== null ? (config.aitbc as Record<string, unknown>) : {};
    config.aitbc = { ...ours, weights: "int8", int8: { block_size: blockSize, accuracy_level: accuracyLevel, float32_layers: float32Layers, quantized_from: info.name } };
    writeFileSync(path.join(tmp, "config.json"), `${JSON.stringify(config, null, 2)}\n`);
    const onnxPath = path.join(tmp, ONNX_MODEL_PATH);
    mkdirSync(path.dirname(onnxPath), { recursive: true });
    writeChunks(onnxPath, proto);
    // Validated before it is moved into place; the move keeps every file, so its size is the result's.
    sizeAfterBytes = loadModelInfo(tmp).sizeBytes;
    return Promise.resolve();
  });
  return { dir: out, matmuls, blockSize, accuracyLevel, float32Layers, keptFloat32, sizeBeforeBytes: info.sizeBytes, sizeAfterBytes };
}

/** A matmul weight found in the graph: the initializer and how it is laid out ("kn": [K, N]; "nk": [N, K], read transposed). */
interface Weight {
  init: ReadInitializer;
  layout: "kn" | "nk";
  /** The Transpose node that turned an [N, K] initializer into the matmul's B, if that is how it came. */
  transpose?: ReadNode;
}

/** An 8-bit copy of a weight added to the model: its initializers' names and MatMulNBits' K, N and block size. */
interface QuantizedCopy {
  data: string;
  scales: string;
  zeroPoints: string;
  k: number;
  n: number;
  blockSize: number;
}

/** What the graphs around a node hold: initializers and node outputs by name, innermost graph first. */
interface Scope {
  initializers: Map<string, ReadInitializer>;
  producers: Map<string, ReadNode>;
  outer?: Scope;
}

/**
 * The model with every MatMul (default domain) whose B is a 2-D float32 initializer — directly,
 * or through a Transpose of one (a tied lm_head against wte) — and every Gemm (alpha 1, A not
 * transposed, C absent or a [N] float32 initializer with beta 1) whose B is one, replaced by a
 * com.microsoft MatMulNBits node over an 8-bit copy of the weight laid out as quantizeInt8
 * lays it out: data [N, blocks, blockSize], scales and zero points [N · blocks]. Matmuls in
 * subgraphs (optimum's If branches) are replaced too; the quantized initializers go to the main
 * graph, once per weight. Transposes and float initializers that nothing reads any more are
 * dropped; every other node, initializer and field is written back as stored. Inner
 * dimensions that are not a multiple of 16 stay float32, and so do the matmuls of the first
 * `float32Layers` transformer blocks (named in `keptFloat32`).
 */
export function quantizeOnnxModel(model: ReadOnnxModel, options: Required<QuantizeOptions>): { proto: ProtoWriter; matmuls: QuantizedMatMul[]; keptFloat32: string[] } {
  const edit: OnnxEdit = { replaceNodes: new Map(), dropInitializers: new Set(), addInitializers: [], addOpsets: new Map([[MS_DOMAIN, 1]]) };
  const matmuls: QuantizedMatMul[] = [];
  const keptFloat32: string[] = [];
  const graphs = allGraphs({ ...model, name: model.graphName });
  const taken = new Set<string>();
  for (const g of graphs) {
    for (const name of [...g.initializers.keys(), ...g.inputs]) taken.add(name);
    for (const n of g.nodes) for (const o of n.outputs) taken.add(o);
  }
  const unique = (base: string): string => {
    let name = base;
    for (let i = 1; taken.has(name); i++) name = `${base}_${i}`;
    taken.add(name);
    return name;
  };
  /** Quantized copies already added, by `${initializer}:${layout}`. */
  const copies = new Map<string, QuantizedCopy>();
  const quantizedCopy = (w: Weight): QuantizedCopy | undefined => {
    const key = `${w.init.name}:${w.layout}`;
    const known = copies.get(key);
    if (known !== undefined) return known;
    const [rows, cols] = w.init.dims as [number, number];
    const [k, n] = w.layout === "kn" ? [rows, cols] : [cols, rows];
    if (k % 16 !== 0) return undefined;
    const blockSize = int8BlockSize(k, options.blockSize);
    const q = quantizeInt8(floatsOf(w.init), k, n, w.layout, blockSize);
    const blocks = k / blockSize;
    const names = { data: unique(`${w.init.name}.int8`), scales: unique(`${w.init.name}.scales`), zeroPoints: unique(`${w.init.name}.zero_points`) };
    edit.addInitializers.push(
      encodeInitializer({ name: names.data, dims: [n, blocks, blockSize], type: OnnxType.UINT8, data: q.data }),
      encodeInitializer({ name: names.scales, dims: [n * blocks], type: OnnxType.FLOAT, data: littleEndianBytes(q.scales) }),
      encodeInitializer({ name: names.zeroPoints, dims: [n * blocks], type: OnnxType.UINT8, data: q.zeroPoints }),
    );
    const copy = { ...names, k, n, blockSize };
    copies.set(key, copy);
    return copy;
  };

  const quantizedWeights = new Set<string>();
  const transposes = new Set<ReadNode>();
  const newReads = new Set<string>();
  const visit = (graph: ReadGraph, outer?: Scope): void => {
    const scope: Scope = { initializers: graph.initializers, producers: new Map(), ...(outer === undefined ? {} : { outer }) };
    for (const node of graph.nodes) {
      for (const g of subgraphs(node.attributes)) visit(g, scope);
      let plan = planMatMul(node, scope);
      for (const o of node.outputs) scope.producers.set(o, node);
      const layer = plan === undefined ? undefined : (gpt2LayerOf(plan.weight.init.name) ?? gpt2LayerOf(node.name));
      if (layer !== undefined && layer < options.float32Layers) {
        keptFloat32.push(node.name === "" ? (node.outputs[0] ?? "") : node.name);
        plan = undefined;
      }
      const copy = plan === undefined ? undefined : quantizedCopy(plan.weight);
      if (plan !== undefined && copy !== undefined) {
        const inputs = [node.inputs[0] as string, copy.data, copy.scales, copy.zeroPoints, ...(plan.bias === undefined ? [] : ["", plan.bias])];
        const attributes: [string, OnnxAttribute][] = [
          ["K", copy.k],
          ["N", copy.n],
          ["bits", 8],
          ["block_size", copy.blockSize],
          ["accuracy_level", options.accuracyLevel],
        ];
        const name = node.name === "" ? unique(`${node.outputs[0] ?? "matmul"}_MatMulNBits`) : node.name;
        edit.replaceNodes.set(node, [encodeNode({ op: "MatMulNBits", domain: MS_DOMAIN, name, inputs, outputs: node.outputs, attributes })]);
        for (const i of inputs) newReads.add(i);
        quantizedWeights.add(plan.weight.init.name);
        if (plan.weight.transpose !== undefined) transposes.add(plan.weight.transpose);
        matmuls.push({ node: name, op: node.op as "MatMul" | "Gemm", weight: plan.weight.init.name, k: copy.k, n: copy.n, blockSize: copy.blockSize });
      }
    }
  };
  visit(graphs[0] as ReadGraph);

  // What is still read once the matmuls are replaced: first the Transposes that fed only them, then the weights.
  const reads = (): Set<string> => {
    const read = new Set(newReads);
    for (const g of graphs) {
      for (const o of g.outputs) read.add(o);
      for (const n of g.nodes) if (!edit.replaceNodes.has(n)) for (const i of n.inputs) read.add(i);
    }
    return read;
  };
  const afterMatMuls = reads();
  for (const t of transposes) if (!t.outputs.some((o) => afterMatMuls.has(o))) edit.replaceNodes.set(t, []);
  const afterTransposes = reads();
  for (const g of graphs) {
    for (const name of g.initializers.keys()) {
      if (quantizedWeights.has(name) && !afterTransposes.has(name) && !g.inputs.includes(name)) edit.dropInitializers.add(name);
    }
  }
  return { proto: rewriteOnnxModel(model, edit), matmuls, keptFloat32 };
}

/** The main graph and every subgraph under it, main first. */
function allGraphs(main: ReadGraph): ReadGraph[] {
  const out: ReadGraph[] = [];
  const walk = (g: ReadGraph): void => {
    out.push(g);
    for (const n of g.nodes) for (const s of subgraphs(n.attributes)) walk(s);
  };
  walk(main);
  return out;
}

function subgraphs(attributes: ReadAttribute[]): ReadGraph[] {
  return attributes.flatMap((a) => [...(a.graph === undefined ? [] : [a.graph]), ...(a.graphs ?? [])]);
}

/** The weight (and Gemm's bias) of a matmul node that MatMulNBits can run, or undefined. */
function planMatMul(node: ReadNode, scope: Scope): { weight: Weight; bias?: string } | undefined {
  if (node.domain !== "" || node.outputs.length !== 1) return undefined;
  const [a, b, c] = node.inputs;
  if (a === undefined || a === "" || b === undefined) return undefined;
  if (node.op === "MatMul" && node.inputs.length === 2) {
    const init = floatMatrix(b, scope);
    if (init !== undefined) return { weight: { init, layout: "kn" } };
    const t = producer(b, scope);
    const perm = t?.attributes.find((x) => x.name === "perm")?.ints;
    if (t === undefined || t.op !== "Transpose" || t.domain !== "" || (perm !== undefined && (perm[0] !== 1 || perm[1] !== 0))) return undefined;
    const source = floatMatrix(t.inputs[0] ?? "", scope);
    return source === undefined ? undefined : { weight: { init: source, layout: "nk", transpose: t } };
  }
  if (node.op === "Gemm") {
    const attr = (name: string): ReadAttribute | undefined => node.attributes.find((x) => x.name === name);
    if ((attr("alpha")?.float ?? 1) !== 1 || (attr("transA")?.int ?? 0) !== 0) return undefined;
    const init = floatMatrix(b, scope);
    if (init === undefined) return undefined;
    const layout = (attr("transB")?.int ?? 0) === 0 ? "kn" : "nk";
    const n = layout === "kn" ? init.dims[1] : init.dims[0];
    if (c === undefined || c === "") return { weight: { init, layout } };
    const bias = lookup(c, scope);
    if ((attr("beta")?.float ?? 1) !== 1 || bias?.dataType !== OnnxType.FLOAT || bias.dims.length !== 1 || bias.dims[0] !== n) return undefined;
    return { weight: { init, layout }, bias: c };
  }
  return undefined;
}

function lookup(name: string, scope: Scope | undefined): ReadInitializer | undefined {
  for (let s = scope; s !== undefined; s = s.outer) {
    const init = s.initializers.get(name);
    if (init !== undefined) return init;
    if (s.producers.has(name)) return undefined;
  }
  return undefined;
}

function producer(name: string, scope: Scope | undefined): ReadNode | undefined {
  for (let s = scope; s !== undefined; s = s.outer) {
    const node = s.producers.get(name);
    if (node !== undefined) return node;
  }
  return undefined;
}

function floatMatrix(name: string, scope: Scope): ReadInitializer | undefined {
  const init = lookup(name, scope);
  return init?.dataType === OnnxType.FLOAT && init.dims.length === 2 ? init : undefined;
}
