/**
 * A minimal protobuf encoder that keeps a message as a list of byte chunks instead of one
 * buffer, so a 500 MB ONNX model is streamed to disk without a second copy of its weights.
 * Field order is the call order, which makes the output byte-for-byte deterministic.
 */
export class ProtoWriter {
  readonly parts: Uint8Array[] = [];
  length = 0;

  private push(bytes: Uint8Array): this {
    this.parts.push(bytes);
    this.length += bytes.length;
    return this;
  }

  private tag(field: number, wireType: 0 | 1 | 2 | 5): this {
    return this.push(encodeVarint(BigInt((field << 3) | wireType)));
  }

  /** int32/int64/enum/bool field (negative values take ten bytes, as protobuf requires). */
  int(field: number, value: number | bigint): this {
    return this.tag(field, 0).push(encodeVarint(BigInt(value)));
  }

  float(field: number, value: number): this {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setFloat32(0, value, true);
    return this.tag(field, 5).push(b);
  }

  /** A fixed-width field's stored bytes (wire 5: 4 bytes, wire 1: 8), written back as read. */
  fixed(field: number, wire: 1 | 5, bytes: Uint8Array): this {
    return this.tag(field, wire).push(bytes);
  }

  string(field: number, value: string): this {
    return this.bytes(field, new TextEncoder().encode(value));
  }

  bytes(field: number, value: Uint8Array): this {
    return this.tag(field, 2).push(encodeVarint(BigInt(value.length))).push(value);
  }

  message(field: number, value: ProtoWriter): this {
    this.tag(field, 2).push(encodeVarint(BigInt(value.length)));
    for (const part of value.parts) this.push(part);
    return this;
  }
}

const MASK64 = (1n << 64n) - 1n;

function encodeVarint(value: bigint): Uint8Array {
  let v = value & MASK64;
  const out: number[] = [];
  while (v >= 0x80n) {
    out.push(Number(v & 0x7fn) | 0x80);
    v >>= 7n;
  }
  out.push(Number(v));
  return Uint8Array.from(out);
}
