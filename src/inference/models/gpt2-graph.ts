import { MS_DOMAIN, OnnxGraph, OnnxType } from "./onnx-graph.js";
import type { Gpt2Config, NamedTensor } from "./gpt2-weights.js";
import { ATTENTION_MASK, INPUT_IDS, kvName, LOGITS, NEW_KEY_VALUES, PAST, POSITION_IDS, PRESENT } from "./model-io.js";
import { INT8_DEFAULTS, int8BlockSize, quantizeInt8 } from "./quantize-int8.js";

/**
 * How the matmul weights are stored: "float32", or "int8" (block-wise 8-bit, run by
 * onnxruntime's com.microsoft.MatMulNBits: a quarter of the bytes read per token).
 */
export type WeightFormat = "float32" | "int8";
export const WEIGHT_FORMATS: readonly WeightFormat[] = ["float32", "int8"];

/** The weight format a value names, or undefined when it names none. */
export function weightFormatOf(value: unknown): WeightFormat | undefined {
  return WEIGHT_FORMATS.find((f) => f === value);
}

/**
 * The graph's outputs. "aitbc" (what we build): logits for the last position only, [B,1,V]
 * (generation reads only those, so the lm_head, a [S, V] matmul, runs for one position however
 * long the prompt), and new_key_values besides present. "optimum": exactly optimum's outputs,
 * logits [B,S,V] and present (tests use it to check every position, and to run the engine on
 * the layout of real exports).
 */
export type GraphLayout = "aitbc" | "optimum";

export interface Gpt2GraphOptions {
  /** Default "float32". */
  format?: WeightFormat;
  /** Default "aitbc". */
  layout?: GraphLayout;
  /** With format "int8": the first this many blocks keep float32 matmuls. Default INT8_DEFAULTS.float32Layers. */
  float32Layers?: number;
}


/** ONNX opset of the graphs we build (LayerNormalization needs 17). */
export const GPT2_OPSET = 17;

/** Replaces masked attention scores (torch.finfo(float32).min, as transformers does); a replacement, not an addition, so a fully masked row stays finite. */
const MASK_VALUE = -3.4028234663852886e38;

/**
 * GPT-2 as one ONNX graph in the layout of optimum's `decoder_model_merged.onnx`, minus the
 * `use_cache_branch` If: a past of length 0 is simply an empty tensor, so one graph serves
 * both the prompt and every decode step.
 *
 * Inputs: input_ids int64 [B,S], attention_mask int64 [B,P+S] (0 = padding, so left padding
 * works), position_ids int64 [B,S], past_key_values.{i}.key|value float32 [B,H,P,D].
 * Outputs: logits float32 [B,1,V] for the last position, present.{i}.key|value float32
 * [B,H,P+S,D], new_key_values.{i}.key|value float32 [B,H,S,D]; with `layout` "optimum", logits
 * [B,S,V] and present only. Consumers of optimum's layout (transformers.js) read the first
 * alike: they take the last position's logits and ignore outputs not named present.
 *
 * Math follows Hugging Face's GPT2LMHeadModel: pre-LayerNorm (eps 1e-5), Conv1D weights
 * [in,out], scores / √D, bottom-right causal mask combined with attention_mask, gelu_new,
 * final ln_f and an lm_head tied to wte.
 *
 * With `format` "int8" each Conv1D matmul and the lm_head are MatMulNBits nodes over 8-bit
 * copies of their weights (quantize-int8.ts; the bias is the node's own input), but those of
 * the first `float32Layers` blocks; wte stays float32 for the embedding lookup. Everything else is identical.
 */
export function buildGpt2Graph(c: Gpt2Config, weights: NamedTensor[], options: Gpt2GraphOptions = {}): OnnxGraph {
  const format = options.format ?? "float32";
  const optimum = options.layout === "optimum";
  const float32Layers = options.float32Layers ?? INT8_DEFAULTS.float32Layers;
  const g = new OnnxGraph("gpt2", GPT2_OPSET);
  const byName = new Map(weights.map((w) => [w.name, w]));
  const tensor = (name: string): NamedTensor => {
    const t = byName.get(name);
    if (t === undefined) throw new Error(`missing weight ${name}`);
    return t;
  };
  const w = (name: string): string => g.floatInit(name, tensor(name).dims, tensor(name).data);
  /** x · W as MatMulNBits over the 8-bit copy of W ([k, n], or [n, k] for "nk"), plus the optional bias. */
  const int8MatMul = (input: string, name: string, layout: "kn" | "nk", bias?: string, output?: string): string => {
    const t = tensor(name);
    const [k, n] = (layout === "kn" ? t.dims : [t.dims[1], t.dims[0]]) as [number, number];
    const q = quantizeInt8(t.data, k, n, layout);
    const blocks = k / q.blockSize;
    const inputs = [
      input,
      g.uint8Init(`${name}.int8`, [n, blocks, q.blockSize], q.data),
      g.floatInit(`${name}.scales`, [n * blocks], q.scales),
      g.uint8Init(`${name}.zero_points`, [n * blocks], q.zeroPoints),
    ];
    // Inputs 4 and 5 are g_idx (unused: blocks are in order) and the bias.
    if (bias !== undefined) inputs.push("", w(bias));
    const attributes = { K: k, N: n, bits: 8, block_size: q.blockSize, accuracy_level: INT8_DEFAULTS.accuracyLevel };
    return g.node("MatMulNBits", inputs, { attributes, domain: MS_DOMAIN, ...(output === undefined ? {} : { outputs: [output] }) })[0] as string;
  };
  const e = c.nEmbd;
  const h = c.nHead;
  const d = e / h;
  if (!Number.isInteger(d)) throw new Error("n_embd must be a multiple of n_head");

  const inputIds = g.input(INPUT_IDS, OnnxType.INT64, ["batch_size", "sequence_length"]);
  const attentionMask = g.input(ATTENTION_MASK, OnnxType.INT64, ["batch_size", "past_sequence_length + sequence_length"]);
  const positionIds = g.input(POSITION_IDS, OnnxType.INT64, ["batch_size", "sequence_length"]);
  const pastDims = ["batch_size", h, "past_sequence_length", d];
  const presentDims = ["batch_size", h, "past_sequence_length + sequence_length", d];
  for (let i = 0; i < c.nLayer; i++) {
    g.input(kvName(PAST, i, "key"), OnnxType.FLOAT, pastDims);
    g.input(kvName(PAST, i, "value"), OnnxType.FLOAT, pastDims);
  }
  g.output(LOGITS, OnnxType.FLOAT, ["batch_size", optimum ? "sequence_length" : 1, c.vocabSize]);
  for (let i = 0; i < c.nLayer; i++) {
    g.output(kvName(PRESENT, i, "key"), OnnxType.FLOAT, presentDims);
    g.output(kvName(PRESENT, i, "value"), OnnxType.FLOAT, presentDims);
  }
  if (!optimum) {
    const newDims = ["batch_size", h, "sequence_length", d];
    for (let i = 0; i < c.nLayer; i++) {
      g.output(kvName(NEW_KEY_VALUES, i, "key"), OnnxType.FLOAT, newDims);
      g.output(kvName(NEW_KEY_VALUES, i, "value"), OnnxType.FLOAT, newDims);
    }
  }

  const zero = g.int64Init("const_zero", [], [0]);
  const one = g.int64Init("const_one", [], [1]);
  const axis1 = g.int64Init("const_axes_1", [1], [1]);
  const axes12 = g.int64Init("const_axes_1_2", [2], [1, 2]);
  const headsShape = g.int64Init("const_shape_heads", [4], [0, 0, h, d]);
  const mergeShape = g.int64Init("const_shape_merge", [3], [0, 0, e]);
  const sqrtD = g.floatInit("const_sqrt_head_dim", [], Float32Array.of(Math.sqrt(d)));
  const maskValue = g.floatInit("const_mask_value", [], Float32Array.of(MASK_VALUE));
  const half = g.floatInit("const_half", [], Float32Array.of(0.5));
  const onef = g.floatInit("const_one_f", [], Float32Array.of(1));
  const three = g.floatInit("const_three", [], Float32Array.of(3));
  const geluC = g.floatInit("const_gelu_coeff", [], Float32Array.of(0.044715));
  const geluK = g.floatInit("const_sqrt_2_over_pi", [], Float32Array.of(Math.sqrt(2 / Math.PI)));

  // allowed[b,0,q,k] = attention_mask[b,k] && k <= P + q, where P = total - S.
  const seqLen = g.op("Gather", [g.op("Shape", [inputIds]), one], { axis: 0 });
  const totalLen = g.op("Gather", [g.op("Shape", [attentionMask]), one], { axis: 0 });
  const pastLen = g.op("Sub", [totalLen, seqLen]);
  const keyPos = g.op("Range", [zero, totalLen, one]);
  const queryPos = g.op("Unsqueeze", [g.op("Range", [pastLen, totalLen, one]), axis1]);
  const causal = g.op("LessOrEqual", [keyPos, queryPos]);
  const padding = g.op("Unsqueeze", [g.op("Cast", [attentionMask], { to: OnnxType.BOOL }), axes12]);
  const allowed = g.op("And", [causal, padding]);

  const wte = w("transformer.wte.weight");
  let x = g.op("Add", [g.op("Gather", [wte, inputIds], { axis: 0 }), g.op("Gather", [w("transformer.wpe.weight"), positionIds], { axis: 0 })]);

  const layerNorm = (input: string, prefix: string): string =>
    g.op("LayerNormalization", [input, w(`${prefix}.weight`), w(`${prefix}.bias`)], { axis: -1, epsilon: { float: 1e-5 } });
  const conv1d = (input: string, prefix: string, layer: number): string =>
    format === "int8" && layer >= float32Layers
      ? int8MatMul(input, `${prefix}.weight`, "kn", `${prefix}.bias`)
      : g.op("Add", [g.op("MatMul", [input, w(`${prefix}.weight`)]), w(`${prefix}.bias`)]);
  const splitHeads = (t: string, output?: string): string => g.op("Transpose", [g.op("Reshape", [t, headsShape])], { perm: [0, 2, 1, 3] }, output);

  for (let i = 0; i < c.nLayer; i++) {
    const p = `transformer.h.${i}`;
    const qkv = conv1d(layerNorm(x, `${p}.ln_1`), `${p}.attn.c_attn`, i);
    const [qs, ks, vs] = g.node("Split", [qkv], { count: 3, attributes: { axis: 2 } }) as [string, string, string];
    const q = splitHeads(qs);
    const k = splitHeads(ks, optimum ? undefined : kvName(NEW_KEY_VALUES, i, "key"));
    const v = splitHeads(vs, optimum ? undefined : kvName(NEW_KEY_VALUES, i, "value"));
    const key = g.op("Concat", [kvName(PAST, i, "key"), k], { axis: 2 }, kvName(PRESENT, i, "key"));
    const value = g.op("Concat", [kvName(PAST, i, "value"), v], { axis: 2 }, kvName(PRESENT, i, "value"));
    const scores = g.op("Div", [g.op("MatMul", [q, g.op("Transpose", [key], { perm: [0, 1, 3, 2] })]), sqrtD]);
    const probs = g.op("Softmax", [g.op("Where", [allowed, scores, maskValue])], { axis: -1 });
    const context = g.op("Reshape", [g.op("Transpose", [g.op("MatMul", [probs, value])], { perm: [0, 2, 1, 3] }), mergeShape]);
    x = g.op("Add", [x, conv1d(context, `${p}.attn.c_proj`, i)]);

    const fc = conv1d(layerNorm(x, `${p}.ln_2`), `${p}.mlp.c_fc`, i);
    // gelu_new: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
    const inner = g.op("Mul", [geluK, g.op("Add", [fc, g.op("Mul", [geluC, g.op("Pow", [fc, three])])])]);
    const gelu = g.op("Mul", [g.op("Mul", [half, fc]), g.op("Add", [onef, g.op("Tanh", [inner])])]);
    x = g.op("Add", [x, conv1d(gelu, `${p}.mlp.c_proj`, i)]);
  }
  const normed = layerNorm(x, "transformer.ln_f");
  // [B,1,E]: Gather with a 1-D index keeps the axis.
  const final = optimum ? normed : g.op("Gather", [normed, g.int64Init("const_last_position", [1], [-1])], { axis: 1 });
  // Tied lm_head: logits = ln_f(x) · wteᵀ (onnxruntime folds the Transpose once at load).
  if (format === "int8") int8MatMul(final, "transformer.wte.weight", "nk", undefined, LOGITS);
  else g.op("MatMul", [final, g.op("Transpose", [wte], { perm: [1, 0] })], undefined, LOGITS);
  return g;
}

/**
 * Bytes of weights one decode step reads: every matmul weight (the lm_head reads all of wte)
 * in its stored format, with int8's scales and zero points, plus the float32 biases and
 * LayerNorms, plus one row each of wte and wpe for the embedding. Decoding is bound by this
 * traffic, so it is what a memory-bandwidth bound divides by.
 */
export function gpt2WeightBytesPerToken(
  c: Pick<Gpt2Config, "nLayer" | "nEmbd" | "vocabSize">,
  format: WeightFormat,
  float32Layers: number = INT8_DEFAULTS.float32Layers,
): number {
  const e = c.nEmbd;
  // [k, n, int8?] of each matmul: c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj per layer, then the lm_head.
  const matmuls: [number, number, boolean][] = [];
  for (let i = 0; i < c.nLayer; i++) {
    const int8 = format === "int8" && i >= float32Layers;
    matmuls.push([e, 3 * e, int8], [e, e, int8], [e, 4 * e, int8], [4 * e, e, int8]);
  }
  matmuls.push([e, c.vocabSize, format === "int8"]);
  // Per int8 block: a float32 scale and a one-byte zero point.
  const matmulBytes = (k: number, n: number, int8: boolean): number => (int8 ? k * n + (n * k * 5) / int8BlockSize(k) : 4 * k * n);
  const floats = c.nLayer * (9 * e + 4 * e) + 2 * e + 2 * e;
  return matmuls.reduce((sum, [k, n, int8]) => sum + matmulBytes(k, n, int8), 0) + 4 * floats;
}
