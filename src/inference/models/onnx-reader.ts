import { readFileSync } from "node:fs";
import { OnnxType } from "./onnx-graph.js";
import { protoFields, protoVarints } from "./proto-reader.js";

/** An initializer as stored: its bytes are little-endian raw_data (float_data / int64_data are converted to it). */
export interface ReadInitializer {
  name: string;
  dims: number[];
  /** ONNX TensorProto.DataType. */
  dataType: number;
  raw: Uint8Array;
}

/** An attribute with what the readers here need decoded; `bytes` is the whole AttributeProto, for re-encoding as it was. */
export interface ReadAttribute {
  name: string;
  /** AttributeProto.type: FLOAT 1, INT 2, STRING 3, TENSOR 4, FLOATS 6, INTS 7, … */
  type: number;
  int?: number;
  ints?: number[];
  float?: number;
  string?: string;
  bytes: Uint8Array;
}

export interface ReadNode {
  op: string;
  domain: string;
  name: string;
  inputs: string[];
  outputs: string[];
  attributes: ReadAttribute[];
}

/** An ONNX ModelProto, decoded far enough to read its weights and walk its graph. */
export interface ReadOnnxModel {
  irVersion: number | undefined;
  /** domain ("" for ai.onnx) → version. */
  opsets: Map<string, number>;
  graphName: string;
  nodes: ReadNode[];
  initializers: Map<string, ReadInitializer>;
  /** Graph input and output names (their type info is onnx-signature's business). */
  inputs: string[];
  outputs: string[];
}

const text = new TextDecoder();

/**
 * Reads an ONNX file's graph: nodes in order, initializers by name, graph I/O names. The whole
 * file is read into memory (a 500 MB gpt2 export takes 500 MB); initializer bytes are views of
 * it, not copies. Weights kept outside the file (external data, for models over 2 GB) are
 * refused with an Error naming the tensor. Throws an Error on a file that is not a ModelProto.
 */
export function readOnnxModel(source: string | Uint8Array): ReadOnnxModel {
  const buf = typeof source === "string" ? new Uint8Array(readFileSync(source)) : source;
  const model: ReadOnnxModel = { irVersion: undefined, opsets: new Map(), graphName: "", nodes: [], initializers: new Map(), inputs: [], outputs: [] };
  let sawGraph = false;
  for (const f of protoFields(buf)) {
    if (f.field === 1 && f.value !== undefined) model.irVersion = f.value;
    else if (f.field === 8 && f.bytes) {
      let domain = "";
      let version = 0;
      for (const o of protoFields(f.bytes)) {
        if (o.field === 1 && o.bytes) domain = text.decode(o.bytes);
        if (o.field === 2 && o.value !== undefined) version = o.value;
      }
      model.opsets.set(domain === "ai.onnx" ? "" : domain, version);
    } else if (f.field === 7 && f.bytes) {
      sawGraph = true;
      readGraph(f.bytes, model);
    }
  }
  if (!sawGraph) throw new Error("no graph in the ONNX file");
  return model;
}

function readGraph(buf: Uint8Array, model: ReadOnnxModel): void {
  for (const g of protoFields(buf)) {
    if (!g.bytes) continue;
    if (g.field === 1) model.nodes.push(readNode(g.bytes));
    else if (g.field === 2) model.graphName = text.decode(g.bytes);
    else if (g.field === 5) {
      const init = readTensor(g.bytes);
      model.initializers.set(init.name, init);
    } else if (g.field === 11 || g.field === 12) {
      let name = "";
      for (const v of protoFields(g.bytes)) if (v.field === 1 && v.bytes) name = text.decode(v.bytes);
      (g.field === 11 ? model.inputs : model.outputs).push(name);
    }
  }
}

function readNode(buf: Uint8Array): ReadNode {
  const node: ReadNode = { op: "", domain: "", name: "", inputs: [], outputs: [], attributes: [] };
  for (const f of protoFields(buf)) {
    if (!f.bytes) continue;
    if (f.field === 1) node.inputs.push(text.decode(f.bytes));
    else if (f.field === 2) node.outputs.push(text.decode(f.bytes));
    else if (f.field === 3) node.name = text.decode(f.bytes);
    else if (f.field === 4) node.op = text.decode(f.bytes);
    else if (f.field === 7) node.domain = text.decode(f.bytes);
    else if (f.field === 5) node.attributes.push(readAttribute(f.bytes));
  }
  if (node.domain === "ai.onnx") node.domain = "";
  return node;
}

function readAttribute(buf: Uint8Array): ReadAttribute {
  const a: ReadAttribute = { name: "", type: 0, bytes: buf };
  for (const f of protoFields(buf)) {
    if (f.field === 1 && f.bytes) a.name = text.decode(f.bytes);
    else if (f.field === 20 && f.value !== undefined) a.type = f.value;
    else if (f.field === 3 && f.value !== undefined) a.int = f.value;
    else if (f.field === 4 && f.bytes) a.string = text.decode(f.bytes);
    else if (f.field === 8) (a.ints ??= []).push(...protoVarints(f));
  }
  if (a.type === 1) a.float = fixed32After(buf, 2);
  return a;
}

/** The value of the first fixed32 field `field` in a message (protoFields skips fixed32 values). */
function fixed32After(buf: Uint8Array, field: number): number | undefined {
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  let pos = 0;
  const varint = (): number => {
    let v = 0;
    let shift = 0;
    for (;;) {
      const b = buf[pos++];
      if (b === undefined) throw new Error("truncated ONNX file");
      v += (b & 0x7f) * 2 ** shift;
      if ((b & 0x80) === 0) return v;
      shift += 7;
    }
  };
  while (pos < buf.length) {
    const tag = varint();
    const wire = tag % 8;
    if (wire === 5) {
      if (Math.floor(tag / 8) === field) return view.getFloat32(pos, true);
      pos += 4;
    } else if (wire === 0) varint();
    else if (wire === 1) pos += 8;
    else if (wire === 2) {
      const len = varint(); // read before adding: `pos += varint()` would add to the old pos
      pos += len;
    }
    else throw new Error("not an ONNX protobuf");
  }
  return undefined;
}

function readTensor(buf: Uint8Array): ReadInitializer {
  const t: ReadInitializer = { name: "", dims: [], dataType: 0, raw: new Uint8Array() };
  let external = false;
  const int64s: number[] = [];
  let floatData: Uint8Array | undefined;
  for (const f of protoFields(buf)) {
    if (f.field === 1) t.dims.push(...protoVarints(f));
    else if (f.field === 2 && f.value !== undefined) t.dataType = f.value;
    else if (f.field === 8 && f.bytes) t.name = text.decode(f.bytes);
    else if (f.field === 9 && f.bytes) t.raw = f.bytes;
    // float_data, packed: little-endian floats, the same bytes raw_data would hold.
    else if (f.field === 4 && f.bytes) floatData = f.bytes;
    else if (f.field === 7) int64s.push(...protoVarints(f));
    else if (f.field === 14 && f.value === 1) external = true;
  }
  if (external) throw new Error(`initializer ${t.name} is stored as external data, which this reader does not follow`);
  if (t.raw.length === 0 && floatData !== undefined) t.raw = floatData;
  if (t.raw.length === 0 && int64s.length > 0 && t.dataType === OnnxType.INT64) {
    t.raw = new Uint8Array(BigInt64Array.from(int64s.map(BigInt)).buffer);
  }
  return t;
}

/** An initializer's values as floats (FLOAT only), copied so that they are aligned. */
export function floatsOf(init: ReadInitializer): Float32Array {
  if (init.dataType !== OnnxType.FLOAT) throw new Error(`initializer ${init.name} is not float32 (ONNX type ${init.dataType})`);
  const count = init.dims.reduce((a, b) => a * b, 1);
  if (init.raw.length !== count * 4) throw new Error(`initializer ${init.name} holds ${init.raw.length} bytes, not ${count} floats`);
  const out = new Float32Array(count);
  new Uint8Array(out.buffer).set(init.raw);
  return out;
}
