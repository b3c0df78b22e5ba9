import { readFileSync } from "node:fs";
import { OnnxType } from "./onnx-graph.js";
import { protoFields, protoFloat, protoVarints, type ProtoField } from "./proto-reader.js";

/** An initializer as stored: its bytes are little-endian raw_data (float_data / int64_data are converted to it). */
export interface ReadInitializer {
  name: string;
  dims: number[];
  /** ONNX TensorProto.DataType. */
  dataType: number;
  raw: Uint8Array;
  /** The whole TensorProto as stored, for writing it back unchanged. */
  bytes: Uint8Array;
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
  /** A GRAPH attribute's subgraph (If's then_branch / else_branch, Loop's body). */
  graph?: ReadGraph;
  /** A GRAPHS attribute's subgraphs. */
  graphs?: ReadGraph[];
  bytes: Uint8Array;
}

export interface ReadNode {
  op: string;
  domain: string;
  name: string;
  inputs: string[];
  outputs: string[];
  attributes: ReadAttribute[];
  /** The whole NodeProto as stored, for writing it back unchanged. */
  bytes: Uint8Array;
}

/** A GraphProto: the model's main graph, or a subgraph held by a node's attribute. */
export interface ReadGraph {
  name: string;
  nodes: ReadNode[];
  initializers: Map<string, ReadInitializer>;
  /** Graph input and output names (their type info is onnx-signature's business). */
  inputs: string[];
  outputs: string[];
  /**
   * Every field of the GraphProto but its nodes (1), name (2) and initializers (5), as stored
   * and in file order: inputs, outputs and value_info with their types, doc_string, sparse
   * initializers, metadata. A rewriter writes them back unchanged.
   */
  rest: ProtoField[];
}

/** An ONNX ModelProto, decoded far enough to read its weights and walk its graph (the main graph's fields are the model's own). */
export interface ReadOnnxModel extends Omit<ReadGraph, "name"> {
  irVersion: number | undefined;
  /** domain ("" for ai.onnx) → version. */
  opsets: Map<string, number>;
  graphName: string;
  /** Every field of the ModelProto but its graph (7), as stored and in file order (ir_version, producer, opset imports, metadata, functions). */
  modelRest: ProtoField[];
}

const text = new TextDecoder();

/**
 * Reads an ONNX file's graph: nodes in order, initializers by name, graph I/O names, the
 * subgraphs of nodes like If, and the stored bytes of every message and of the fields it does
 * not decode, so that onnx-rewrite.ts can write back what an edit leaves alone unchanged. The
 * whole file is read into memory (a 500 MB gpt2 export takes 500 MB); initializer and other
 * bytes are views of it, not copies. Weights kept outside the file (external data, for models over 2 GB) are
 * refused with an Error naming the tensor. Throws an Error on a file that is not a ModelProto.
 */
export function readOnnxModel(source: string | Uint8Array): ReadOnnxModel {
  const buf = typeof source === "string" ? new Uint8Array(readFileSync(source)) : source;
  let graph: ReadGraph | undefined;
  let irVersion: number | undefined;
  const opsets = new Map<string, number>();
  const modelRest: ProtoField[] = [];
  for (const f of protoFields(buf)) {
    if (f.field === 7 && f.bytes) {
      graph = readGraph(f.bytes);
      continue;
    }
    modelRest.push(f);
    if (f.field === 1 && f.value !== undefined) irVersion = f.value;
    else if (f.field === 8 && f.bytes) {
      let domain = "";
      let version = 0;
      for (const o of protoFields(f.bytes)) {
        if (o.field === 1 && o.bytes) domain = text.decode(o.bytes);
        if (o.field === 2 && o.value !== undefined) version = o.value;
      }
      opsets.set(domain === "ai.onnx" ? "" : domain, version);
    }
  }
  if (graph === undefined) throw new Error("no graph in the ONNX file");
  const { name, ...rest } = graph;
  return { irVersion, opsets, graphName: name, ...rest, modelRest };
}

function readGraph(buf: Uint8Array): ReadGraph {
  const graph: ReadGraph = { name: "", nodes: [], initializers: new Map(), inputs: [], outputs: [], rest: [] };
  for (const g of protoFields(buf)) {
    if (g.field === 1 && g.bytes) graph.nodes.push(readNode(g.bytes));
    else if (g.field === 2 && g.bytes) graph.name = text.decode(g.bytes);
    else if (g.field === 5 && g.bytes) {
      const init = readTensor(g.bytes);
      graph.initializers.set(init.name, init);
    } else {
      graph.rest.push(g);
      if ((g.field === 11 || g.field === 12) && g.bytes) {
        let name = "";
        for (const v of protoFields(g.bytes)) if (v.field === 1 && v.bytes) name = text.decode(v.bytes);
        (g.field === 11 ? graph.inputs : graph.outputs).push(name);
      }
    }
  }
  return graph;
}

function readNode(buf: Uint8Array): ReadNode {
  const node: ReadNode = { op: "", domain: "", name: "", inputs: [], outputs: [], attributes: [], bytes: buf };
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
    else if (f.field === 6 && f.bytes) a.graph = readGraph(f.bytes);
    else if (f.field === 11 && f.bytes) (a.graphs ??= []).push(readGraph(f.bytes));
    else if (f.field === 2) a.float ??= protoFloat(f);
  }
  return a;
}

function readTensor(buf: Uint8Array): ReadInitializer {
  const t: ReadInitializer = { name: "", dims: [], dataType: 0, raw: new Uint8Array(), bytes: buf };
  let external = false;
  const int64s: number[] = [];
  let floatData: Uint8Array | undefined;
  for (const f of protoFields(buf)) {
    if (f.field === 1) t.dims.push(...protoVarints(f));
    else if (f.field === 2 && f.value !== undefined) t.dataType = f.value;
    else if (f.field === 8 && f.bytes) t.name = text.decode(f.bytes);
    else if (f.field === 9 && f.bytes) t.raw = f.bytes;
    // float_data, packed: little-endian floats, the same bytes raw_data would hold.
    else if (f.field === 4 && f.wire === 2 && f.bytes) floatData = f.bytes;
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
