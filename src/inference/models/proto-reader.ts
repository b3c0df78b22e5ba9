/**
 * One protobuf field as read: a varint's value, or the bytes (a view, not a copy) of a
 * length-delimited field (wire 2) or of a fixed-width one (wire 5: 4 bytes, wire 1: 8 bytes).
 */
export interface ProtoField {
  field: number;
  wire: number;
  value?: number;
  bytes?: Uint8Array;
}

/**
 * The fields of a protobuf message in order. Varints are numbers (int64 values beyond 2^53
 * lose precision, which no ONNX count or dimension reaches). Throws on bytes that are not a
 * protobuf message.
 */
export function* protoFields(buf: Uint8Array): Generator<ProtoField> {
  let pos = 0;
  while (pos < buf.length) {
    const tag = decodeVarint(buf, pos);
    pos += tag.length;
    const field = Math.floor(tag.value / 8);
    const wire = tag.value % 8;
    if (wire === 0) {
      const v = decodeVarint(buf, pos);
      pos += v.length;
      yield { field, wire, value: v.value };
    } else if (wire === 2) {
      const len = decodeVarint(buf, pos);
      pos += len.length;
      if (pos + len.value > buf.length) throw new Error("malformed ONNX file");
      yield { field, wire, bytes: buf.subarray(pos, pos + len.value) };
      pos += len.value;
    } else if (wire === 1 || wire === 5) {
      const width = wire === 1 ? 8 : 4;
      if (pos + width > buf.length) throw new Error("malformed ONNX file");
      yield { field, wire, bytes: buf.subarray(pos, pos + width) };
      pos += width;
    } else throw new Error("not an ONNX protobuf");
  }
}

/** A fixed32 field's float (AttributeProto.f). */
export function protoFloat(f: ProtoField): number | undefined {
  if (f.wire !== 5 || f.bytes === undefined) return undefined;
  return new DataView(f.bytes.buffer, f.bytes.byteOffset, 4).getFloat32(0, true);
}

/** Packed or repeated varints (a repeated int64 field may come either way). */
export function protoVarints(f: ProtoField): number[] {
  if (f.value !== undefined) return [f.value];
  const out: number[] = [];
  const buf = f.bytes ?? new Uint8Array();
  let pos = 0;
  while (pos < buf.length) {
    const v = decodeVarint(buf, pos);
    out.push(v.value);
    pos += v.length;
  }
  return out;
}

export function decodeVarint(buf: Uint8Array, start: number): { value: number; length: number } {
  let value = 0n;
  for (let i = 0; i < 10; i++) {
    const b = buf[start + i];
    if (b === undefined) throw new Error("truncated ONNX file");
    value |= BigInt(b & 0x7f) << BigInt(7 * i);
    if ((b & 0x80) === 0) return { value: Number(BigInt.asIntN(64, value)), length: i + 1 };
  }
  throw new Error("malformed varint in ONNX file");
}
