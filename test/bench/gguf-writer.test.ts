import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { float16Bits, GgufWriter, quantizeQ8_0 } from "../../bench/gguf-writer.js";

/** The float an IEEE binary16 bit pattern stands for. */
function half(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exp = (bits >> 10) & 0x1f;
  const mant = bits & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 0x1f) return mant === 0 ? sign * Infinity : NaN;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

describe("float16Bits", () => {
  it("gives the known patterns and rounds to nearest even", () => {
    expect(float16Bits(1)).toBe(0x3c00);
    expect(float16Bits(-2)).toBe(0xc000);
    expect(float16Bits(65504)).toBe(0x7bff);
    expect(float16Bits(1e6)).toBe(0x7c00);
    expect(float16Bits(2 ** -24)).toBe(0x0001);
    // 1 + 2^-11 lies halfway between 1 and the next half: ties go to the even mantissa (1).
    expect(float16Bits(1 + 2 ** -11)).toBe(0x3c00);
    expect(float16Bits(1 + 3 * 2 ** -11)).toBe(0x3c02);
  });

  it("is within half an ulp on a sweep of values", () => {
    for (let x = 1e-4; x < 6e4; x *= 1.37) {
      const h = half(float16Bits(x));
      const ulp = 2 ** (Math.floor(Math.log2(x)) - 10);
      expect(Math.abs(h - x)).toBeLessThanOrEqual(ulp / 2 + 1e-12);
    }
  });
});

describe("quantizeQ8_0", () => {
  it("stores 32 values per 34-byte block that dequantize within half a step", () => {
    const values = Float32Array.from({ length: 64 }, (_, i) => Math.sin(i * 0.7) * (i < 32 ? 0.05 : 3));
    const q = quantizeQ8_0(values);
    expect(q.length).toBe(68);
    const view = new DataView(q.buffer);
    for (let b = 0; b < 2; b++) {
      const d = half(view.getUint16(b * 34, true));
      let max = 0;
      for (let j = 0; j < 32; j++) max = Math.max(max, Math.abs(values[b * 32 + j]!));
      expect(d).toBeCloseTo(max / 127, 4);
      for (let j = 0; j < 32; j++) {
        const x = view.getInt8(b * 34 + 2 + j) * d;
        expect(Math.abs(x - values[b * 32 + j]!)).toBeLessThanOrEqual(d * 0.51 + Math.abs(values[b * 32 + j]!) * 1e-3);
      }
    }
  });

  it("refuses a length that is not whole blocks", () => {
    expect(() => quantizeQ8_0(new Float32Array(33))).toThrow(/multiple of 32/);
  });
});

describe("GgufWriter", () => {
  let dir = "";
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it("writes a v3 header, metadata, tensor infos in ggml order and aligned data", () => {
    dir = mkdtempSync(path.join(tmpdir(), "gguf-"));
    const file = path.join(dir, "t.gguf");
    const w = new GgufWriter().set("general.architecture", { type: "string", value: "gpt2" }).set("gpt2.block_count", { type: "u32", value: 12 });
    w.addTensor("a", [2, 3], Float32Array.of(1, 2, 3, 4, 5, 6), "F32");
    const size = w.write(file);
    const buf = readFileSync(file);
    expect(buf.length).toBe(size);
    expect(buf.subarray(0, 4).toString()).toBe("GGUF");
    expect(buf.readUInt32LE(4)).toBe(3);
    expect(Number(buf.readBigUInt64LE(8))).toBe(1);
    expect(Number(buf.readBigUInt64LE(16))).toBe(2);
    // The tensor info: name "a", 2 dims [3, 2] (contiguous first), type F32, offset 0.
    const at = buf.indexOf(Buffer.from([1, 0, 0, 0, 0, 0, 0, 0, 0x61, 2, 0, 0, 0]));
    expect(at).toBeGreaterThan(0);
    expect(Number(buf.readBigUInt64LE(at + 13))).toBe(3);
    expect(Number(buf.readBigUInt64LE(at + 21))).toBe(2);
    expect(buf.readUInt32LE(at + 29)).toBe(0);
    const dataStart = size - 32;
    expect(dataStart % 32).toBe(0);
    expect(buf.readFloatLE(dataStart + 20)).toBe(6);
  });
});
