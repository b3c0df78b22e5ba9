import * as ort from "onnxruntime-node";
import { describe, expect, it } from "vitest";
import { CACHE_GROWTH, createKvCache, KeptCache, PresentCache, type CacheSource } from "../../src/inference/kv-cache.js";
import { kvName, kvNames, LOGITS, NEW_KEY_VALUES, PAST, PRESENT } from "../../src/inference/models/model-io.js";

const MODEL = { name: "synthetic", nLayer: 2, nHead: 2, headDim: 3 };

/** A past of `rows` rows with `length` slots whose entry (row, head, slot, i) is row·1000 + head·100 + slot·10 + i (+ layer/part offsets). */
function numberedPast(rows: number, length: number): Record<string, ort.Tensor> {
  const past: Record<string, ort.Tensor> = {};
  kvNames(PAST, MODEL.nLayer).forEach((name, n) => {
    const data = new Float32Array(rows * MODEL.nHead * length * MODEL.headDim);
    for (let r = 0; r < rows; r++)
      for (let h = 0; h < MODEL.nHead; h++)
        for (let s = 0; s < length; s++)
          for (let i = 0; i < MODEL.headDim; i++) data[((r * MODEL.nHead + h) * length + s) * MODEL.headDim + i] = n * 10000 + r * 1000 + h * 100 + s * 10 + i;
    past[name] = new ort.Tensor("float32", data, [rows, MODEL.nHead, length, MODEL.headDim]);
  });
  return past;
}

/** Row r, head h of a cache tensor: its slots as lists of D values. */
function slots(tensor: ort.Tensor, r: number, h: number): number[][] {
  const [, heads, capacity, d] = tensor.dims as [number, number, number, number];
  const data = tensor.data as Float32Array;
  return Array.from({ length: capacity }, (_, s) => Array.from(data.subarray(((r * heads + h) * capacity + s) * d, ((r * heads + h) * capacity + s + 1) * d)));
}

describe("KV cache strategies", () => {
  it("picks a kept cache only for graphs with new_key_values, and fetches only those and the logits then", () => {
    expect(createKvCache({ ...MODEL, newKeyValues: true })).toBeInstanceOf(KeptCache);
    expect(createKvCache(MODEL)).toBeInstanceOf(PresentCache);
    expect(createKvCache({ ...MODEL, newKeyValues: true }).stepFetches).toEqual([LOGITS, ...kvNames(NEW_KEY_VALUES, 2)]);
    expect(createKvCache(MODEL).stepFetches).toBeUndefined();
  });

  it("rebuilds rows right-aligned at the longest row, padding on the left, with room to grow when kept", () => {
    for (const cache of [new KeptCache(MODEL), new PresentCache(MODEL)]) {
      const a = numberedPast(1, 2);
      const b = numberedPast(2, 5);
      // Row 0: 2 entries from a's only row; row 1: the last 3 of b's row 1 (5 slots, in use up to 4).
      const sources: CacheSource[] = [
        { past: a, length: 2, capacity: 2, index: 0 },
        { past: b, length: 4, capacity: 5, index: 1 },
      ];
      cache.rebuild([2, 3], sources);
      expect(cache.length).toBe(3);
      expect(cache.capacity).toBe(cache instanceof KeptCache ? 3 + CACHE_GROWTH : 3);
      const key1 = cache.past[kvName(PAST, 1, "key")]!;
      expect(key1.dims).toEqual([2, 2, cache.capacity, 3]);
      // Layer 1's key is the third tensor in kvNames order (offset 20000).
      expect(slots(key1, 0, 1).slice(0, 3)).toEqual([[0, 0, 0], [20100, 20101, 20102], [20110, 20111, 20112]]);
      expect(slots(key1, 1, 0).slice(0, 3)).toEqual([[21010, 21011, 21012], [21020, 21021, 21022], [21030, 21031, 21032]]);
      for (const s of slots(key1, 1, 0).slice(3)) expect(s).toEqual([0, 0, 0]);
    }
  });

  it("a kept cache writes a step's new entries into slot P and grows when full; a present cache takes the outputs whole", () => {
    const kept = new KeptCache(MODEL);
    kept.rebuild([1], [{ past: numberedPast(1, 1), length: 1, capacity: 1, index: 0 }]);
    const outputs: Record<string, ort.Tensor> = {};
    for (let layer = 0; layer < MODEL.nLayer; layer++)
      for (const part of ["key", "value"] as const) outputs[kvName(NEW_KEY_VALUES, layer, part)] = new ort.Tensor("float32", Float32Array.from({ length: 6 }, (_, i) => -(i + 1)), [1, 2, 1, 3]);
    for (let step = 0; step < CACHE_GROWTH; step++) {
      kept.reserve([1 + step]);
      kept.absorb(outputs);
    }
    expect(kept.length).toBe(1 + CACHE_GROWTH);
    expect(kept.capacity).toBe(1 + CACHE_GROWTH);
    const key0 = kept.past[kvName(PAST, 0, "key")]!;
    expect(slots(key0, 0, 0)[0]).toEqual([0, 1, 2]);
    expect(slots(key0, 0, 1)[CACHE_GROWTH]).toEqual([-4, -5, -6]);
    // Full: the next reserve copies into a larger cache, entries kept.
    kept.reserve([1 + CACHE_GROWTH]);
    expect(kept.capacity).toBe(1 + 2 * CACHE_GROWTH);
    expect(slots(kept.past[kvName(PAST, 0, "key")]!, 0, 1)[CACHE_GROWTH]).toEqual([-4, -5, -6]);

    const present = new PresentCache(MODEL);
    const whole = numberedPast(1, 4);
    present.rebuild([3], [{ past: numberedPast(1, 3), length: 3, capacity: 3, index: 0 }]);
    const presentOutputs: Record<string, ort.Tensor> = {};
    kvNames(PRESENT, MODEL.nLayer).forEach((name, n) => (presentOutputs[name] = whole[kvNames(PAST, MODEL.nLayer)[n]!]!));
    present.absorb(presentOutputs);
    expect(present.length).toBe(4);
    expect(present.past[kvName(PAST, 1, "value")]).toBe(whole[kvName(PAST, 1, "value")]);
  });
});
