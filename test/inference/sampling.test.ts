import { describe, expect, it } from "vitest";
import { Prng } from "../../src/common/prng.js";
import { applyRepetitionPenalty, argmax, candidateDistribution, drawFrom, sampleNextToken } from "../../src/inference/sampling.js";

const softmax = (xs: number[]): number[] => {
  const m = Math.max(...xs);
  const e = xs.map((x) => Math.exp(x - m));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((x) => x / s);
};

describe("candidateDistribution", () => {
  const logits = Float32Array.from([2, 1, 0, -1]);

  it("is the softmax of logits/T, most likely first, when top-k and top-p are off", () => {
    const d = candidateDistribution(logits, { temperature: 1, top_k: 0, top_p: 1 });
    expect([...d.ids]).toEqual([0, 1, 2, 3]);
    const want = softmax([2, 1, 0, -1]);
    [...d.probs].forEach((p, i) => expect(p).toBeCloseTo(want[i]!, 6));
  });

  it("sharpens with a lower temperature", () => {
    const d = candidateDistribution(logits, { temperature: 0.5, top_k: 0, top_p: 1 });
    const want = softmax([4, 2, 0, -2]);
    [...d.probs].forEach((p, i) => expect(p).toBeCloseTo(want[i]!, 6));
  });

  it("keeps the k most likely tokens and renormalises", () => {
    const d = candidateDistribution(Float32Array.from([0, 3, 1, 2]), { temperature: 1, top_k: 2, top_p: 1 });
    expect([...d.ids]).toEqual([1, 3]);
    const z = Math.exp(3) + Math.exp(2);
    expect(d.probs[0]).toBeCloseTo(Math.exp(3) / z, 6);
    expect(d.probs[1]).toBeCloseTo(Math.exp(2) / z, 6);
  });

  it("keeps the smallest prefix whose mass reaches top_p", () => {
    // softmax([2,1,0,-1]) ≈ 0.644, 0.237, 0.087, 0.032: 0.644 < 0.7 ≤ 0.881, so two tokens stay.
    const d = candidateDistribution(logits, { temperature: 1, top_k: 0, top_p: 0.7 });
    expect([...d.ids]).toEqual([0, 1]);
    expect(d.probs[0]).toBeCloseTo(Math.E / (Math.E + 1), 6);
    // A tiny top_p still keeps the most likely token.
    expect([...candidateDistribution(logits, { temperature: 1, top_k: 0, top_p: 0.01 }).ids]).toEqual([0]);
  });

  it("applies top-k before top-p", () => {
    // Over all four: 0.644 + 0.237 = 0.881 < 0.9, so top_p 0.9 keeps three tokens.
    expect([...candidateDistribution(logits, { temperature: 1, top_k: 0, top_p: 0.9 }).ids]).toEqual([0, 1, 2]);
    // After top-k 3 the mass is renormalised: softmax([2,1,0]) ≈ 0.665, 0.245 → 0.910 ≥ 0.9, two tokens.
    const d = candidateDistribution(logits, { temperature: 1, top_k: 3, top_p: 0.9 });
    expect([...d.ids]).toEqual([0, 1]);
    expect(d.probs[0]).toBeCloseTo(Math.E / (Math.E + 1), 6);
  });

  it("selects top-k correctly from a vocabulary-sized vector", () => {
    const big = new Float32Array(50_257);
    for (let i = 0; i < big.length; i++) big[i] = Math.sin(i * 12.9898) * 10;
    const expected = [...big.keys()].sort((a, b) => big[b]! - big[a]! || a - b).slice(0, 40);
    expect([...candidateDistribution(big, { temperature: 1, top_k: 40, top_p: 1 }).ids]).toEqual(expected);
  });
});

describe("repetition penalty", () => {
  it("divides positive and multiplies negative logits of seen tokens, once each", () => {
    const l = Float32Array.from([2, 1.5, 0, -1]);
    applyRepetitionPenalty(l, [0, 3, 0], 2);
    expect([...l]).toEqual([1, 1.5, 0, -2]);
  });

  it("changes the greedy choice", () => {
    const params = { temperature: 0, top_k: 0, top_p: 1, repetition_penalty: 2 };
    expect(sampleNextToken(Float32Array.from([2, 1.5, 0]), [0], params, new Prng(1))).toBe(1);
    expect(sampleNextToken(Float32Array.from([2, 1.5, 0]), [], params, new Prng(1))).toBe(0);
  });
});

describe("seeded sampling", () => {
  const params = { temperature: 1, top_k: 0, top_p: 1, repetition_penalty: 1 };
  const draw = (seed: number, n: number): number[] => {
    const random = new Prng(seed);
    return Array.from({ length: n }, () => sampleNextToken(Float32Array.from([2, 1, 0, -1]), [], params, random));
  };

  it("gives the same tokens for the same seed and different ones for another", () => {
    expect(draw(7, 50)).toEqual(draw(7, 50));
    expect(draw(7, 50)).not.toEqual(draw(8, 50));
  });

  it("draws with the frequencies of the distribution", () => {
    const counts = [0, 0, 0, 0];
    for (const id of draw(123, 20_000)) counts[id]!++;
    const want = softmax([2, 1, 0, -1]);
    counts.forEach((c, i) => expect(c / 20_000).toBeCloseTo(want[i]!, 1));
  });

  it("drawFrom follows the cumulative distribution", () => {
    const candidates = { ids: Int32Array.from([5, 9]), probs: Float64Array.from([0.25, 0.75]) };
    const fixed = (u: number): Prng => ({ next: () => u }) as unknown as Prng;
    expect(drawFrom(candidates, fixed(0.2))).toBe(5);
    expect(drawFrom(candidates, fixed(0.3))).toBe(9);
    expect(drawFrom(candidates, fixed(0.9999999))).toBe(9);
  });

  it("argmax takes the first of equal maxima", () => {
    expect(argmax(Float32Array.from([1, 3, 3, 0]))).toBe(1);
  });
});
