import { closeSync, fstatSync, openSync, readSync } from "node:fs";
import { decodeVarint, protoFields as fields } from "./proto-reader.js";

/** One graph input or output: name, ONNX element type and dims (number, symbolic name, or undefined). */
export interface OnnxTensorInfo {
  name: string;
  elemType: number;
  dims: (number | string | undefined)[];
}

export interface OnnxSignature {
  inputs: OnnxTensorInfo[];
  outputs: OnnxTensorInfo[];
  /** Version of the default ("" / ai.onnx) opset, if declared. */
  opset: number | undefined;
}

/**
 * Reads the graph inputs/outputs of an ONNX file without loading it: walks the protobuf on
 * disk and seeks over everything else (weights, nodes), so a 500 MB export costs a few reads.
 * Throws an Error if the file is not a well-formed ModelProto.
 */
export function readOnnxSignature(file: string): OnnxSignature {
  const fd = openSync(file, "r");
  try {
    const cursor = new FileCursor(fd, fstatSync(fd).size);
    const sig: OnnxSignature = { inputs: [], outputs: [], opset: undefined };
    let sawGraph = false;
    cursor.walk(cursor.size, (field, wire) => {
      if (wire !== 2) return false;
      const len = cursor.varint();
      if (field === 7) {
        sawGraph = true;
        cursor.walk(cursor.pos + len, (gField, gWire) => {
          if (gWire !== 2 || (gField !== 11 && gField !== 12)) return false;
          const info = parseValueInfo(cursor.bytes(cursor.varint()));
          (gField === 11 ? sig.inputs : sig.outputs).push(info);
          return true;
        });
      } else if (field === 8) {
        let domain = "";
        let version: number | undefined;
        for (const f of fields(cursor.bytes(len))) {
          if (f.field === 1 && f.bytes) domain = new TextDecoder().decode(f.bytes);
          if (f.field === 2 && f.value !== undefined) version = f.value;
        }
        if (domain === "" || domain === "ai.onnx") sig.opset = version;
      } else cursor.pos += len;
      return true;
    });
    if (!sawGraph) throw new Error("no graph in the ONNX file");
    return sig;
  } finally {
    closeSync(fd);
  }
}

class FileCursor {
  pos = 0;
  private readonly small = Buffer.alloc(10);

  constructor(
    private readonly fd: number,
    readonly size: number,
  ) {}

  varint(): number {
    const n = readSync(this.fd, this.small, 0, 10, this.pos);
    const { value, length } = decodeVarint(this.small.subarray(0, n), 0);
    this.pos += length;
    return value;
  }

  bytes(len: number): Uint8Array {
    if (this.pos + len > this.size) throw new Error("truncated ONNX file");
    const out = Buffer.alloc(len);
    let off = 0;
    while (off < len) {
      const n = readSync(this.fd, out, off, len - off, this.pos + off);
      if (n === 0) throw new Error("truncated ONNX file");
      off += n;
    }
    this.pos += len;
    return out;
  }

  /** Visits each field up to `end`; `visit` returns false to have the field skipped. */
  walk(end: number, visit: (field: number, wire: number) => boolean): void {
    if (end > this.size) throw new Error("truncated ONNX file");
    while (this.pos < end) {
      const tag = this.varint();
      const field = Math.floor(tag / 8);
      const wire = tag % 8;
      if (visit(field, wire)) continue;
      if (wire === 0) this.varint();
      else if (wire === 1) this.pos += 8;
      else if (wire === 5) this.pos += 4;
      else if (wire === 2) {
        const len = this.varint(); // read before adding: `pos += varint()` would use the old pos
        this.pos += len;
      }
      else throw new Error("not an ONNX protobuf");
    }
    if (this.pos !== end) throw new Error("malformed ONNX file");
  }
}

function parseValueInfo(buf: Uint8Array): OnnxTensorInfo {
  const info: OnnxTensorInfo = { name: "", elemType: 0, dims: [] };
  const text = new TextDecoder();
  for (const f of fields(buf)) {
    if (f.field === 1 && f.bytes) info.name = text.decode(f.bytes);
    if (f.field !== 2 || !f.bytes) continue;
    for (const t of fields(f.bytes)) {
      if (t.field !== 1 || !t.bytes) continue; // tensor_type
      for (const tt of fields(t.bytes)) {
        if (tt.field === 1 && tt.value !== undefined) info.elemType = tt.value;
        if (tt.field !== 2 || !tt.bytes) continue; // shape
        for (const dim of fields(tt.bytes)) {
          if (dim.field !== 1 || !dim.bytes) continue;
          let d: number | string | undefined;
          for (const dv of fields(dim.bytes)) {
            if (dv.field === 1 && dv.value !== undefined) d = dv.value;
            if (dv.field === 2 && dv.bytes) d = text.decode(dv.bytes);
          }
          info.dims.push(d);
        }
      }
    }
  }
  return info;
}
