/**
 * A minimal GGUF v3 writer (the file format of llama.cpp), enough for the bench's exporter:
 * scalar, string and array metadata, and tensors stored as F32 or Q8_0.
 *
 * Layout (little-endian): magic "GGUF", version u32 = 3, tensor count u64, metadata count u64;
 * each metadata entry is a key (u64 length + UTF-8 bytes), a value type u32 and the value;
 * each tensor info is a name, n_dims u32, dims u64[n_dims] in ggml order (dims[0] is the
 * contiguous one: a [rows, cols] matrix is written [cols, rows]), a ggml type u32 and an
 * offset u64 into the data section. The data section starts at the next multiple of the
 * alignment (32) after the infos, and every tensor starts at a multiple of it.
 */
import { closeSync, openSync, writeSync } from "node:fs";

/** GGUF metadata value types. */
const VT = { UINT32: 4, INT32: 5, FLOAT32: 6, STRING: 8, ARRAY: 9 } as const;

/** ggml tensor types this writer stores. */
export const GgmlType = { F32: 0, Q8_0: 8 } as const;
export type GgmlTypeName = keyof typeof GgmlType;

/** Values per Q8_0 block, and its bytes: an fp16 scale and 32 int8s. */
export const Q8_0_BLOCK = 32;
const Q8_0_BLOCK_BYTES = 2 + Q8_0_BLOCK;

const ALIGNMENT = 32;

type Metadata =
  | { type: "u32"; value: number }
  | { type: "f32"; value: number }
  | { type: "string"; value: string }
  | { type: "string[]"; value: readonly string[] }
  | { type: "i32[]"; value: readonly number[] };

interface TensorEntry {
  name: string;
  /** ggml order: dims[0] is contiguous. */
  dims: number[];
  type: GgmlTypeName;
  data: Uint8Array;
}

const utf8 = new TextEncoder();

export class GgufWriter {
  private readonly metadata = new Map<string, Metadata>();
  private readonly tensors: TensorEntry[] = [];

  set(key: string, value: Metadata): this {
    this.metadata.set(key, value);
    return this;
  }

  /**
   * A tensor from row-major float32 values of shape `shape` (outermost first, as numpy and
   * ONNX write it); stored as F32, or as Q8_0 along the last (contiguous) axis.
   */
  addTensor(name: string, shape: readonly number[], values: Float32Array, type: GgmlTypeName): this {
    const count = shape.reduce((a, b) => a * b, 1);
    if (values.length !== count) throw new Error(`tensor ${name} has ${values.length} values, not ${shape.join("×")}`);
    const data = type === "F32" ? new Uint8Array(values.buffer, values.byteOffset, values.byteLength) : quantizeQ8_0(values);
    this.tensors.push({ name, dims: [...shape].reverse(), type, data });
    return this;
  }

  /** Writes the file; returns its size in bytes. */
  write(file: string): number {
    const head = new ByteSink();
    head.bytes(utf8.encode("GGUF"));
    head.u32(3);
    head.u64(this.tensors.length);
    head.u64(this.metadata.size);
    for (const [key, m] of this.metadata) {
      head.string(key);
      writeValue(head, m);
    }
    let offset = 0;
    const offsets: number[] = [];
    for (const t of this.tensors) {
      head.string(t.name);
      head.u32(t.dims.length);
      for (const d of t.dims) head.u64(d);
      head.u32(GgmlType[t.type]);
      head.u64(offset);
      offsets.push(offset);
      offset = align(offset + t.data.length);
    }
    head.bytes(new Uint8Array(align(head.length) - head.length));

    const fd = openSync(file, "w");
    let size = 0;
    const put = (bytes: Uint8Array): void => {
      let done = 0;
      while (done < bytes.length) done += writeSync(fd, bytes, done, bytes.length - done);
      size += bytes.length;
    };
    try {
      put(head.result());
      for (const t of this.tensors) {
        put(t.data);
        put(new Uint8Array(align(t.data.length) - t.data.length));
      }
    } finally {
      closeSync(fd);
    }
    return size;
  }
}

function align(n: number): number {
  return Math.ceil(n / ALIGNMENT) * ALIGNMENT;
}

function writeValue(out: ByteSink, m: Metadata): void {
  switch (m.type) {
    case "u32":
      out.u32(VT.UINT32);
      out.u32(m.value);
      return;
    case "f32":
      out.u32(VT.FLOAT32);
      out.f32(m.value);
      return;
    case "string":
      out.u32(VT.STRING);
      out.string(m.value);
      return;
    case "string[]":
      out.u32(VT.ARRAY);
      out.u32(VT.STRING);
      out.u64(m.value.length);
      for (const s of m.value) out.string(s);
      return;
    case "i32[]":
      out.u32(VT.ARRAY);
      out.u32(VT.INT32);
      out.u64(m.value.length);
      for (const v of m.value) out.i32(v);
      return;
  }
}

/** A growable little-endian byte buffer for the header. */
class ByteSink {
  private buf = new Uint8Array(1 << 16);
  private view = new DataView(this.buf.buffer);
  length = 0;

  private room(n: number): void {
    if (this.length + n <= this.buf.length) return;
    let size = this.buf.length;
    while (size < this.length + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.length));
    this.buf = next;
    this.view = new DataView(next.buffer);
  }
  u32(v: number): void {
    this.room(4);
    this.view.setUint32(this.length, v, true);
    this.length += 4;
  }
  i32(v: number): void {
    this.room(4);
    this.view.setInt32(this.length, v, true);
    this.length += 4;
  }
  f32(v: number): void {
    this.room(4);
    this.view.setFloat32(this.length, v, true);
    this.length += 4;
  }
  u64(v: number): void {
    this.room(8);
    this.view.setBigUint64(this.length, BigInt(v), true);
    this.length += 8;
  }
  bytes(b: Uint8Array): void {
    this.room(b.length);
    this.buf.set(b, this.length);
    this.length += b.length;
  }
  string(s: string): void {
    const b = utf8.encode(s);
    this.u64(b.length);
    this.bytes(b);
  }
  result(): Uint8Array {
    return this.buf.subarray(0, this.length);
  }
}

/**
 * ggml's Q8_0: each run of 32 consecutive values becomes an fp16 scale d = max|x| / 127 and
 * 32 int8s q = round(x / d) (halves away from zero), so x ≈ q · d. The quotient uses d before
 * its rounding to fp16, as ggml's reference quantizer does.
 */
export function quantizeQ8_0(values: Float32Array): Uint8Array {
  if (values.length % Q8_0_BLOCK !== 0) throw new Error(`Q8_0 needs a multiple of ${Q8_0_BLOCK} values, not ${values.length}`);
  const blocks = values.length / Q8_0_BLOCK;
  const out = new Uint8Array(blocks * Q8_0_BLOCK_BYTES);
  const view = new DataView(out.buffer);
  for (let b = 0; b < blocks; b++) {
    const first = b * Q8_0_BLOCK;
    let max = 0;
    for (let j = 0; j < Q8_0_BLOCK; j++) max = Math.max(max, Math.abs(values[first + j]!));
    const d = Math.fround(max / 127);
    const inv = d === 0 ? 0 : Math.fround(1 / d);
    const at = b * Q8_0_BLOCK_BYTES;
    view.setUint16(at, float16Bits(d), true);
    for (let j = 0; j < Q8_0_BLOCK; j++) {
      const x = Math.fround(values[first + j]! * inv);
      const q = Math.sign(x) * Math.round(Math.abs(x));
      view.setInt8(at + 2 + j, Math.max(-128, Math.min(127, q)));
    }
  }
  return out;
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** IEEE binary16 bits of a float, rounded to nearest even (finite, non-negative scales are all Q8_0 needs, but any float works). */
export function float16Bits(value: number): number {
  f32[0] = value;
  const x = u32[0]!;
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant !== 0 ? 0x200 : 0);
  let e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    // Subnormal half: shift the mantissa (with its implicit 1) right, rounding to nearest even.
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    const rest = mant & ((1 << shift) - 1);
    let m = mant >>> shift;
    if (rest > half || (rest === half && (m & 1) === 1)) m++;
    return sign | m;
  }
  let m = mant >>> 13;
  const rest = mant & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && (m & 1) === 1)) {
    m++;
    if (m === 0x400) {
      m = 0;
      e++;
      if (e >= 0x1f) return sign | 0x7c00;
    }
  }
  return sign | (e << 10) | m;
}
