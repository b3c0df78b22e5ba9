import { ProtoWriter } from "./proto-writer.js";

/** ONNX TensorProto.DataType values this project uses. */
export const OnnxType = { FLOAT: 1, UINT8: 2, INT64: 7, BOOL: 9, FLOAT16: 10 } as const;
export type OnnxElemType = (typeof OnnxType)[keyof typeof OnnxType];

/** onnxruntime's contrib-op domain (MatMulNBits), imported at version 1 when a node uses it. */
export const MS_DOMAIN = "com.microsoft";

/** A dimension is a fixed size or a symbolic name ("batch_size"). */
export type OnnxDim = number | string;

export type OnnxAttribute = number | number[] | { float: number };

/** A node to encode (also used by rewriters that add nodes to a model they read). */
export interface OnnxNode {
  op: string;
  inputs: string[];
  outputs: string[];
  name: string;
  attributes: [string, OnnxAttribute][];
  /** "" (the default ONNX domain) or MS_DOMAIN. */
  domain: string;
}

export interface OnnxInitializer {
  name: string;
  dims: number[];
  type: OnnxElemType;
  data: Uint8Array;
}

interface OnnxValueInfo {
  name: string;
  type: OnnxElemType;
  dims: OnnxDim[];
}

/**
 * Collects nodes, initializers and graph I/O and encodes them as an ONNX ModelProto.
 * Only what the GPT-2 builder needs: default-domain and com.microsoft ops, float/int64/uint8
 * initializers stored as little-endian raw_data, int attributes, int lists and floats.
 */
export class OnnxGraph {
  private readonly nodes: OnnxNode[] = [];
  private readonly initializers: OnnxInitializer[] = [];
  private readonly inputs: OnnxValueInfo[] = [];
  private readonly outputs: OnnxValueInfo[] = [];
  private counter = 0;

  constructor(
    readonly name: string,
    readonly opset: number,
  ) {}

  input(name: string, type: OnnxElemType, dims: OnnxDim[]): string {
    this.inputs.push({ name, type, dims });
    return name;
  }

  output(name: string, type: OnnxElemType, dims: OnnxDim[]): void {
    this.outputs.push({ name, type, dims });
  }

  floatInit(name: string, dims: number[], data: Float32Array): string {
    if (data.length !== dims.reduce((a, b) => a * b, 1)) throw new Error(`initializer ${name}: size does not match dims`);
    this.initializers.push({ name, dims, type: OnnxType.FLOAT, data: littleEndianBytes(data) });
    return name;
  }

  uint8Init(name: string, dims: number[], data: Uint8Array): string {
    if (data.length !== dims.reduce((a, b) => a * b, 1)) throw new Error(`initializer ${name}: size does not match dims`);
    this.initializers.push({ name, dims, type: OnnxType.UINT8, data });
    return name;
  }

  /** An int64 constant; `dims` [] makes a scalar. */
  int64Init(name: string, dims: number[], values: number[]): string {
    this.initializers.push({ name, dims, type: OnnxType.INT64, data: littleEndianBytes(BigInt64Array.from(values.map(BigInt))) });
    return name;
  }

  /**
   * Adds a node and returns its output names. With `outputs` given those names are used (graph
   * outputs); otherwise they are made unique from the op type.
   */
  node(
    op: string,
    inputs: string[],
    options: { outputs?: string[]; count?: number; attributes?: Record<string, OnnxAttribute>; domain?: string; name?: string } = {},
  ): string[] {
    const id = this.counter++;
    const outputs = options.outputs ?? Array.from({ length: options.count ?? 1 }, (_, i) => `/${op}_${id}_output_${i}`);
    this.nodes.push({ op, inputs, outputs, name: options.name ?? `/${op}_${id}`, attributes: Object.entries(options.attributes ?? {}), domain: options.domain ?? "" });
    return outputs;
  }

  /** A single-output node. */
  op(op: string, inputs: string[], attributes?: Record<string, OnnxAttribute>, output?: string): string {
    const [out] = this.node(op, inputs, { ...(attributes === undefined ? {} : { attributes }), ...(output === undefined ? {} : { outputs: [output] }) });
    return out as string;
  }

  /** Encodes the ModelProto (IR version 8, the one that goes with opset 17). */
  encode(producer: { name: string; version: string }): ProtoWriter {
    const graph = new ProtoWriter();
    for (const n of this.nodes) graph.message(1, encodeNode(n));
    graph.string(2, this.name);
    for (const t of this.initializers) graph.message(5, encodeInitializer(t));
    for (const v of this.inputs) graph.message(11, encodeValueInfo(v));
    for (const v of this.outputs) graph.message(12, encodeValueInfo(v));

    const model = new ProtoWriter();
    model.int(1, 8);
    model.string(2, producer.name);
    model.string(3, producer.version);
    model.message(7, graph);
    model.message(8, new ProtoWriter().string(1, "").int(2, this.opset));
    if (this.nodes.some((n) => n.domain === MS_DOMAIN)) model.message(8, new ProtoWriter().string(1, MS_DOMAIN).int(2, 1));
    return model;
  }
}

/** The little-endian bytes of a typed array (a view on little-endian hosts), as raw_data holds them. */
export function littleEndianBytes(data: Float32Array | BigInt64Array): Uint8Array {
  const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  if (new Uint8Array(new Uint16Array([1]).buffer)[0] === 1) return bytes;
  // Big-endian host: swap each element so raw_data is little-endian as ONNX requires.
  const out = new Uint8Array(bytes.length);
  const w = data.BYTES_PER_ELEMENT;
  for (let i = 0; i < bytes.length; i += w) for (let j = 0; j < w; j++) out[i + j] = bytes[i + w - 1 - j] as number;
  return out;
}

export function encodeNode(n: OnnxNode): ProtoWriter {
  const w = new ProtoWriter();
  for (const i of n.inputs) w.string(1, i);
  for (const o of n.outputs) w.string(2, o);
  w.string(3, n.name);
  w.string(4, n.op);
  if (n.domain !== "") w.string(7, n.domain);
  for (const [name, value] of n.attributes) {
    const a = new ProtoWriter().string(1, name);
    // AttributeProto.type: FLOAT 1, INT 2, INTS 7.
    if (typeof value === "number") a.int(3, value).int(20, 2);
    else if (Array.isArray(value)) {
      for (const v of value) a.int(8, v);
      a.int(20, 7);
    } else a.float(2, value.float).int(20, 1);
    w.message(5, a);
  }
  return w;
}

export function encodeInitializer(t: OnnxInitializer): ProtoWriter {
  const w = new ProtoWriter();
  for (const d of t.dims) w.int(1, d);
  w.int(2, t.type);
  w.string(8, t.name);
  w.bytes(9, t.data);
  return w;
}

function encodeValueInfo(v: OnnxValueInfo): ProtoWriter {
  const shape = new ProtoWriter();
  for (const d of v.dims) shape.message(1, typeof d === "number" ? new ProtoWriter().int(1, d) : new ProtoWriter().string(2, d));
  const tensor = new ProtoWriter().int(1, v.type).message(2, shape);
  return new ProtoWriter().string(1, v.name).message(2, new ProtoWriter().message(1, tensor));
}
