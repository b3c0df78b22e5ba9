import { describe, expect, it } from "vitest";
import { Prng } from "../../src/common/prng.js";
import { dequantizeInt8, gpt2LayerOf, INT8_DEFAULTS, int8BlockSize, quantizeInt8 } from "../../src/inference/models/quantize-int8.js";

describe("block-wise int8 quantization (MatMulNBits layout)", () => {
  it("picks the default block (32, measured by bench:int8) or the largest smaller power of two from 16 that divides the inner dimension", () => {
    expect(INT8_DEFAULTS).toEqual({ blockSize: 32, accuracyLevel: 4, float32Layers: 1 });
    expect(int8BlockSize(768)).toBe(32);
    expect(int8BlockSize(3072)).toBe(32);
    expect(int8BlockSize(48)).toBe(16);
    expect(int8BlockSize(768, 128)).toBe(128);
    expect(int8BlockSize(96, 128)).toBe(32);
    expect(int8BlockSize(16, 256)).toBe(16);
    expect(() => int8BlockSize(40)).toThrow(/multiple of 16/);
    expect(() => int8BlockSize(768, 48)).toThrow(/must be one of 16, 32, 64, 128, 256/);
  });

  it("stores each column's blocks with scale max|w|/127 and bytes round(w/scale)+128 (hand-computed)", () => {
    // k = 16 rows, n = 2 columns, [k, n] row-major: column 0 is 0, 0.1, …, 1.5; column 1 is all zero.
    const k = 16;
    const w = new Float32Array(k * 2);
    for (let row = 0; row < k; row++) w[row * 2] = Math.fround(row * 0.1);
    const q = quantizeInt8(w, k, 2, "kn");
    expect(q.blockSize).toBe(16);
    expect(q.scales[0]).toBeCloseTo(1.5 / 127, 7);
    // 0 → 128, 0.7 → round(0.7 · 127 / 1.5) = 59 → 187, 1.5 → 127 → 255.
    expect([q.data[0], q.data[7], q.data[15]]).toEqual([128, 187, 255]);
    // An all-zero column: scale 1, every byte the zero point.
    expect(q.scales[1]).toBe(1);
    expect([...q.data.subarray(16, 32)]).toEqual(Array.from({ length: 16 }, () => 128));
    expect([...q.zeroPoints]).toEqual([128, 128]);
    expect(dequantizeInt8(q, 7, 0)).toBeCloseTo(59 * (1.5 / 127), 6);
  });

  it("reads an [n, k] embedding as the transpose of a [k, n] weight", () => {
    const k = 32;
    const n = 5;
    const prng = new Prng(3);
    const kn = Float32Array.from({ length: k * n }, () => prng.next() - 0.5);
    const nk = new Float32Array(k * n);
    for (let row = 0; row < k; row++) for (let col = 0; col < n; col++) nk[col * k + row] = kn[row * n + col]!;
    const a = quantizeInt8(kn, k, n, "kn");
    const b = quantizeInt8(nk, k, n, "nk");
    expect(b.data).toEqual(a.data);
    expect(b.scales).toEqual(a.scales);
  });

  it("reconstructs every weight to within half a step of its block's scale", () => {
    const k = 256;
    const n = 24;
    const prng = new Prng(11);
    // Two blocks per column, the first a hundred times smaller than the second: each gets its own scale.
    const w = Float32Array.from({ length: k * n }, (_, i) => (prng.next() - 0.5) * (Math.floor(i / n) < 128 ? 0.01 : 1));
    const q = quantizeInt8(w, k, n, "kn", 128);
    const blocks = k / q.blockSize;
    expect(blocks).toBe(2);
    for (let col = 0; col < n; col++) expect(q.scales[col * 2]! * 20).toBeLessThan(q.scales[col * 2 + 1]!);
    let worst = 0;
    for (let row = 0; row < k; row++) {
      for (let col = 0; col < n; col++) {
        const scale = q.scales[col * blocks + Math.floor(row / q.blockSize)]!;
        worst = Math.max(worst, Math.abs(dequantizeInt8(q, row, col) - w[row * n + col]!) / scale);
      }
    }
    expect(worst).toBeLessThanOrEqual(0.5 + 1e-6);
    expect(Math.min(...q.data)).toBeGreaterThanOrEqual(1);
  });
});

describe("gpt2LayerOf", () => {
  it("reads the block from Hugging Face's parameter names and torch's node names, and nothing from other names", () => {
    expect(gpt2LayerOf("transformer.h.0.attn.c_attn.weight")).toBe(0);
    expect(gpt2LayerOf("transformer.h.11.mlp.c_proj.weight")).toBe(11);
    expect(gpt2LayerOf("h.3.mlp.c_fc.weight")).toBe(3);
    expect(gpt2LayerOf("/transformer/h.7/mlp/c_fc/MatMul")).toBe(7);
    expect(gpt2LayerOf("/transformer/h.2")).toBe(2);
    for (const name of ["transformer.wte.weight", "transformer.ln_f.weight", "onnx::MatMul_1234", "/lm_head/MatMul", "graph.h.x.weight", "transformer.hh.1.weight", "transformer.h.1x.weight", ""]) {
      expect(gpt2LayerOf(name), name).toBeUndefined();
    }
  });
});
