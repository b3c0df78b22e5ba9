import { readFileSync, readdirSync } from "node:fs";
import path from "node:path";
import * as ort from "onnxruntime-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ONNX_MODEL_PATH } from "../../src/inference/models/build-model.js";
import { gpt2WeightBytesPerToken } from "../../src/inference/models/gpt2-graph.js";
import { NEW_KEY_VALUES } from "../../src/inference/models/model-io.js";
import { gpt2ParameterCount, initGpt2Weights, type NamedTensor } from "../../src/inference/models/gpt2-weights.js";
import { loadModelInfo } from "../../src/inference/models/model-info.js";
import { INT8_DEFAULTS } from "../../src/inference/models/quantize-int8.js";
import { RECIPES } from "../../src/inference/models/recipes.js";
import { emptyKv, referenceForward, type RefKv } from "./gpt2-reference.js";
import { buildTinyModel, TINY } from "./tiny-model.js";

const C = TINY.config;
const D = C.nEmbd / C.nHead;
const TOLERANCE = 1e-4;

let session: ort.InferenceSession;
let weights: Map<string, NamedTensor>;
let modelDir: string;
let cleanup: () => void;

beforeAll(async () => {
  // Optimum's layout: logits for every position, so each can be checked against the
  // reference; what we ship differs only in its outputs (checked below).
  ({ modelDir, cleanup } = await buildTinyModel({ layout: "optimum" }));
  session = await ort.InferenceSession.create(path.join(modelDir, ONNX_MODEL_PATH));
  weights = new Map(initGpt2Weights(C, TINY.init, TINY.defaultSeed).map((t) => [t.name, t]));
});
afterAll(async () => {
  await session.release();
  cleanup();
});

const int64 = (rows: number[][]): ort.Tensor => new ort.Tensor("int64", BigInt64Array.from(rows.flat().map(BigInt)), [rows.length, rows[0]!.length]);

type Past = Record<string, ort.Tensor>;

function emptyPast(batch: number): Past {
  const past: Past = {};
  for (let i = 0; i < C.nLayer; i++) {
    for (const part of ["key", "value"]) past[`past_key_values.${i}.${part}`] = new ort.Tensor("float32", new Float32Array(0), [batch, C.nHead, 0, D]);
  }
  return past;
}

async function runOrt(
  ids: number[][],
  mask: number[][],
  positions: number[][],
  past: Past,
  on: ort.InferenceSession = session,
): Promise<{ logits: Float32Array; dims: readonly number[]; next: Past; added: Record<string, ort.Tensor | undefined> }> {
  const out = await on.run({ input_ids: int64(ids), attention_mask: int64(mask), position_ids: int64(positions), ...past });
  const next: Past = {};
  // new_key_values, where the graph has them, under the same names.
  const added: Record<string, ort.Tensor | undefined> = {};
  for (let i = 0; i < C.nLayer; i++) {
    for (const part of ["key", "value"]) {
      next[`past_key_values.${i}.${part}`] = out[`present.${i}.${part}`]!;
      added[`past_key_values.${i}.${part}`] = out[`${NEW_KEY_VALUES}.${i}.${part}`];
    }
  }
  return { logits: out.logits!.data as Float32Array, dims: out.logits!.dims, next, added };
}

/** Row 0 is 5 real tokens; row 1 is 2 pads then 3 real tokens (positions as transformers computes them). */
const PADDED_BATCH = {
  ids: [
    [464, 2068, 7586, 21831, 18045],
    [50256, 50256, 40, 588, 340],
  ],
  mask: [
    [1, 1, 1, 1, 1],
    [0, 0, 1, 1, 1],
  ],
  positions: [
    [0, 1, 2, 3, 4],
    [1, 1, 0, 1, 2],
  ],
};

/** Max |ort - ref| over the rows of one batch entry. */
function maxDiff(ort: Float32Array, batchIndex: number, seqLen: number, ref: number[][], rows: number[]): number {
  let m = 0;
  for (const t of rows) {
    const base = (batchIndex * seqLen + t) * C.vocabSize;
    for (let v = 0; v < C.vocabSize; v++) m = Math.max(m, Math.abs(ort[base + v]! - ref[t]![v]!));
  }
  return m;
}

describe("tiny-gpt2 ONNX graph vs an independent TypeScript GPT-2 forward pass", () => {
  it("agrees on a prompt, single-token steps and a multi-token chunk over a KV cache", async () => {
    const kv: RefKv = emptyKv(C);
    const prompt = [15496, 995, 11, 428, 318];
    let r = await runOrt([prompt], [prompt.map(() => 1)], [[0, 1, 2, 3, 4]], emptyPast(1));
    expect(r.dims).toEqual([1, 5, C.vocabSize]);
    let ref = referenceForward(C, weights, prompt, [0, 1, 2, 3, 4], kv);
    expect(maxDiff(r.logits, 0, 5, ref, [0, 1, 2, 3, 4])).toBeLessThan(TOLERANCE);

    // Past length 5, then 6: one token each.
    for (const [tok, pos] of [[402, 5], [11571, 6]] as const) {
      r = await runOrt([[tok]], [Array.from({ length: pos + 1 }, () => 1)], [[pos]], r.next);
      ref = referenceForward(C, weights, [tok], [pos], kv);
      expect(maxDiff(r.logits, 0, 1, ref, [0])).toBeLessThan(TOLERANCE);
    }
    expect(r.next["past_key_values.0.key"]!.dims).toEqual([1, C.nHead, 7, D]);

    // Past length 7, three new tokens at once (bottom-right causal mask).
    r = await runOrt([[12, 17, 0]], [Array.from({ length: 10 }, () => 1)], [[7, 8, 9]], r.next);
    ref = referenceForward(C, weights, [12, 17, 0], [7, 8, 9], kv);
    expect(maxDiff(r.logits, 0, 3, ref, [0, 1, 2])).toBeLessThan(TOLERANCE);
  });

  it("agrees at positions far from 0", async () => {
    const ids = [50256, 1000, 2000, 3000];
    const positions = [1000, 1001, 1002, 1023];
    const r = await runOrt([ids], [[1, 1, 1, 1]], [positions], emptyPast(1));
    const ref = referenceForward(C, weights, ids, positions, emptyKv(C));
    expect(maxDiff(r.logits, 0, 4, ref, [0, 1, 2, 3])).toBeLessThan(TOLERANCE);
  });

  it("handles a left-padded batch: padding is masked, padded rows stay finite, the cache carries the mask", async () => {
    const { ids, mask, positions } = PADDED_BATCH;
    const r = await runOrt(ids, mask, positions, emptyPast(2));
    expect(r.logits.every(Number.isFinite)).toBe(true);
    const kv0 = emptyKv(C);
    const kv1 = emptyKv(C);
    expect(maxDiff(r.logits, 0, 5, referenceForward(C, weights, ids[0]!, positions[0]!, kv0), [0, 1, 2, 3, 4])).toBeLessThan(TOLERANCE);
    const ref1 = referenceForward(C, weights, ids[1]!, positions[1]!, kv1, mask[1]);
    expect(maxDiff(r.logits, 1, 5, ref1, [2, 3, 4])).toBeLessThan(TOLERANCE);

    // Next step for both rows with past length 5; the pads stay masked through the cache.
    const step = await runOrt([[13], [13]], [[...mask[0]!, 1], [...mask[1]!, 1]], [[5], [3]], r.next);
    expect(maxDiff(step.logits, 0, 1, referenceForward(C, weights, [13], [5], kv0), [0])).toBeLessThan(TOLERANCE);
    expect(maxDiff(step.logits, 1, 1, referenceForward(C, weights, [13], [3], kv1, [...mask[1]!, 1]), [0])).toBeLessThan(TOLERANCE);
  });

  it("keeps the top two logits apart, so greedy decoding does not hinge on rounding", async () => {
    const ids = [15496, 995, 11, 428, 318, 402, 11571, 12, 17, 0, 1212, 318, 257, 1332, 13, 198];
    const r = await runOrt([ids], [ids.map(() => 1)], [ids.map((_, i) => i)], emptyPast(1));
    const gaps = ids.map((_, t) => {
      const row = Array.from(r.logits.subarray(t * C.vocabSize, (t + 1) * C.vocabSize)).sort((a, b) => b - a);
      return row[0]! - row[1]!;
    });
    const wide = gaps.filter((g) => g > 1e-2).length;
    expect(wide).toBeGreaterThanOrEqual(ids.length - 1);
  });
});

describe("the graph we ship: logits for the last position only, and each run's new keys and values", () => {
  let shipped: ort.InferenceSession;
  let built: Awaited<ReturnType<typeof buildTinyModel>>;
  beforeAll(async () => {
    built = await buildTinyModel();
    shipped = await ort.InferenceSession.create(path.join(built.modelDir, ONNX_MODEL_PATH));
  });
  afterAll(async () => {
    await shipped.release();
    built.cleanup();
  });

  /** Row `t` of batch entry `b` of [B,S,V] logits. */
  const row = (logits: Float32Array, b: number, seqLen: number, t: number): Float32Array => logits.subarray((b * seqLen + t) * C.vocabSize, (b * seqLen + t + 1) * C.vocabSize);

  it("gives [B,1,V], each the last row of optimum's layout, the same cache, and new_key_values the cache's newest entries, over a left-padded batch and a step", async () => {
    const { ids, mask, positions } = PADDED_BATCH;
    const all = await runOrt(ids, mask, positions, emptyPast(2));
    const last = await runOrt(ids, mask, positions, emptyPast(2), shipped);
    expect(last.dims).toEqual([2, 1, C.vocabSize]);
    expect(row(last.logits, 0, 1, 0)).toEqual(row(all.logits, 0, 5, 4));
    expect(row(last.logits, 1, 1, 0)).toEqual(row(all.logits, 1, 5, 4));
    for (const name of Object.keys(all.next)) {
      expect(last.next[name]!.data).toEqual(all.next[name]!.data);
      // With an empty past, the new entries are the whole cache; optimum's layout has none.
      expect(last.added[name]!.data).toEqual(last.next[name]!.data);
      expect(all.added[name]).toBeUndefined();
    }

    const stepMask = [[...mask[0]!, 1], [...mask[1]!, 1]];
    const allStep = await runOrt([[13], [13]], stepMask, [[5], [3]], all.next);
    const lastStep = await runOrt([[13], [13]], stepMask, [[5], [3]], last.next, shipped);
    expect(lastStep.logits).toEqual(allStep.logits);
    for (const name of Object.keys(allStep.next)) {
      const added = lastStep.added[name]!;
      expect(added.dims).toEqual([2, C.nHead, 1, D]);
      const present = lastStep.next[name]!.data as Float32Array;
      for (let bh = 0; bh < 2 * C.nHead; bh++) {
        // Slot 5 of each [6, D] block of present, the one this step appended.
        expect((added.data as Float32Array).subarray(bh * D, (bh + 1) * D)).toEqual(present.subarray((bh * 6 + 5) * D, (bh * 6 + 6) * D));
      }
    }
    expect(loadModelInfo(built.modelDir)).toMatchObject({ lastLogitsOnly: true, newKeyValues: true });
    expect(loadModelInfo(modelDir)).toMatchObject({ lastLogitsOnly: false, newKeyValues: false });
  });
});

describe("model builder", () => {
  it("is deterministic: the same seed gives byte-identical files, another seed other weights", async () => {
    const a = await buildTinyModel({ seed: 7 });
    const b = await buildTinyModel({ seed: 7 });
    const c = await buildTinyModel({ seed: 8 });
    try {
      const files = (dir: string): string[] => readdirSync(dir, { recursive: true, withFileTypes: true }).filter((e) => e.isFile()).map((e) => path.relative(dir, path.join(e.parentPath, e.name))).sort();
      expect(files(a.modelDir)).toEqual(files(b.modelDir));
      for (const f of files(a.modelDir)) expect(readFileSync(path.join(a.modelDir, f)).equals(readFileSync(path.join(b.modelDir, f)))).toBe(true);
      expect(readFileSync(path.join(a.modelDir, ONNX_MODEL_PATH)).equals(readFileSync(path.join(c.modelDir, ONNX_MODEL_PATH)))).toBe(false);
    } finally {
      a.cleanup();
      b.cleanup();
      c.cleanup();
    }
  });

  it("writes config.json with what transformers needs for gpt2", () => {
    const cfg = JSON.parse(readFileSync(path.join(modelDir, "config.json"), "utf8")) as Record<string, unknown>;
    expect(cfg).toMatchObject({
      model_type: "gpt2",
      architectures: ["GPT2LMHeadModel"],
      n_layer: C.nLayer,
      n_head: C.nHead,
      n_embd: C.nEmbd,
      n_positions: C.nPositions,
      n_ctx: C.nPositions,
      vocab_size: 50257,
      bos_token_id: 50256,
      eos_token_id: 50256,
    });
    const tok = JSON.parse(readFileSync(path.join(modelDir, "tokenizer_config.json"), "utf8")) as Record<string, unknown>;
    expect(tok).toMatchObject({ model_max_length: C.nPositions, eos_token: "<|endoftext|>", bos_token: "<|endoftext|>", unk_token: "<|endoftext|>" });
  });

  it("counts parameters like gpt2-small (124,439,808) and like the weights it writes", () => {
    expect(gpt2ParameterCount(RECIPES["gpt2-124m-random"]!.config)).toBe(124_439_808);
    const total = [...weights.values()].reduce((s, t) => s + t.data.length, 0);
    expect(gpt2ParameterCount(C)).toBe(total);
  });
});

describe("int8 weights (MatMulNBits)", () => {
  let int8: ort.InferenceSession;
  let built: Awaited<ReturnType<typeof buildTinyModel>>;
  beforeAll(async () => {
    built = await buildTinyModel({ weights: "int8", layout: "optimum" });
    int8 = await ort.InferenceSession.create(path.join(built.modelDir, ONNX_MODEL_PATH));
  });
  afterAll(async () => {
    await int8.release();
    built.cleanup();
  });

  /** Largest |int8 − reference| over the rows, relative to the largest |reference| logit, and the rows whose argmax agrees. */
  function compare(logits: Float32Array, ref: number[][]): { relative: number; sameArgmax: number } {
    let err = 0;
    let scale = 0;
    let sameArgmax = 0;
    ref.forEach((row, t) => {
      const got = logits.subarray(t * C.vocabSize, (t + 1) * C.vocabSize);
      let a = 0;
      let b = 0;
      for (let v = 0; v < C.vocabSize; v++) {
        err = Math.max(err, Math.abs(got[v]! - row[v]!));
        scale = Math.max(scale, Math.abs(row[v]!));
        if (row[v]! > row[a]!) a = v;
        if (got[v]! > got[b]!) b = v;
      }
      if (a === b) sameArgmax++;
    });
    return { relative: err / scale, sameArgmax };
  }

  it("stays close to the float32 forward pass, over a prompt and a decode step on the KV cache", async () => {
    // Weights are rounded to 8 bits per block and so are activations (accuracy_level 4): about 3% here.
    const ids = [15496, 995, 11, 428, 318, 402, 11571, 12, 17, 0, 1212, 318, 257, 1332, 13, 198];
    const positions = ids.map((_, i) => i);
    const kv = emptyKv(C);
    const r = await runOrt([ids], [ids.map(() => 1)], [positions], emptyPast(1), int8);
    const prompt = compare(r.logits, referenceForward(C, weights, ids, positions, kv));
    expect(prompt.relative).toBeLessThan(0.045);
    expect(prompt.sameArgmax).toBeGreaterThanOrEqual(ids.length - 2);

    const step = await runOrt([[262]], [[...ids.map(() => 1), 1]], [[ids.length]], r.next, int8);
    const next = compare(step.logits, referenceForward(C, weights, [262], [ids.length], kv));
    expect(next.relative).toBeLessThan(0.045);
    expect(step.next["past_key_values.1.value"]!.dims).toEqual([1, C.nHead, ids.length + 1, D]);
  });

  it("says so in config.json and the model info", () => {
    expect(JSON.parse(readFileSync(path.join(built.modelDir, "config.json"), "utf8"))).toMatchObject({ aitbc: { weights: "int8" } });
    expect(loadModelInfo(built.modelDir).weights).toBe("int8");
    expect(loadModelInfo(modelDir).weights).toBe("float32");
  });

  it("reads a quarter of the weight bytes per token (scales and zero points add 5 bytes per 128)", () => {
    const small = RECIPES["gpt2-124m-random"]!.config;
    // float32: every parameter once (the lm_head reads all of wte) except wpe, of which one row,
    // plus the row of wte the embedding looks up.
    const perToken = 124_439_808 - 1024 * 768 + 2 * 768;
    expect(gpt2WeightBytesPerToken(small, "float32")).toBe(4 * perToken);
    const matmulWeights = 12 * 12 * 768 * 768 + 50_257 * 768;
    const floats = perToken - matmulWeights;
    // A float32 scale and a zero-point byte per block (every K of gpt2-small is a multiple of the default block).
    expect(gpt2WeightBytesPerToken(small, "int8", 0)).toBe(matmulWeights * (1 + 5 / INT8_DEFAULTS.blockSize) + 4 * floats);
    // By default the first layer's matmuls stay float32: 4 bytes a weight there.
    const layer0 = 12 * 768 * 768;
    expect(gpt2WeightBytesPerToken(small, "int8")).toBe((matmulWeights - layer0) * (1 + 5 / INT8_DEFAULTS.blockSize) + 4 * layer0 + 4 * floats);
  });
});
