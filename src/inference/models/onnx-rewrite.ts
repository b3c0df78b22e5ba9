import type { ReadGraph, ReadNode, ReadOnnxModel } from "./onnx-reader.js";
import { protoFields, type ProtoField } from "./proto-reader.js";
import { ProtoWriter } from "./proto-writer.js";

/** A message to write: bytes as they were stored, or one encoded anew. */
export type EncodedMessage = Uint8Array | ProtoWriter;

/** What a rewrite changes in a model it read; everything else is written back as stored. */
export interface OnnxEdit {
  /** Nodes (of any graph, subgraphs too) to write as these messages instead ([] drops the node). */
  replaceNodes: Map<ReadNode, EncodedMessage[]>;
  /** Initializers to leave out, by name, in whichever graph holds them. */
  dropInitializers: Set<string>;
  /** Initializers to add to the main graph, after its own (subgraphs see the main graph's). */
  addInitializers: EncodedMessage[];
  /** Opset imports to add when the model lacks them: domain → version. */
  addOpsets: Map<string, number>;
}

/**
 * Encodes a model read by readOnnxModel with `edit` applied. Fields are written in field-number
 * order, as protobuf serializers write them, with repeated fields in the order read; nodes,
 * initializers and other fields that the edit leaves alone are their stored bytes. So an empty
 * edit gives back a canonically serialized file byte for byte. A node holding a subgraph that
 * changed (If's branches in optimum's merged decoder) is re-encoded around its new subgraph.
 */
export function rewriteOnnxModel(model: ReadOnnxModel, edit: OnnxEdit): ProtoWriter {
  const fields: [number, (w: ProtoWriter) => void][] = model.modelRest.map((f) => [f.field, (w) => writeField(w, f)]);
  fields.push([7, (w) => w.message(7, encodeGraph({ ...model, name: model.graphName }, edit, true))]);
  for (const [domain, version] of edit.addOpsets) {
    if (!model.opsets.has(domain)) fields.push([8, (w) => w.message(8, new ProtoWriter().string(1, domain).int(2, version))]);
  }
  return writeInFieldOrder(fields);
}

function encodeGraph(graph: ReadGraph, edit: OnnxEdit, main: boolean): ProtoWriter {
  const fields: [number, (w: ProtoWriter) => void][] = [];
  for (const node of graph.nodes) {
    const replaced = edit.replaceNodes.get(node) ?? (graphsChanged(node, edit) ? [encodeNodeAround(node, edit)] : [node.bytes]);
    for (const m of replaced) fields.push([1, (w) => writeMessage(w, 1, m)]);
  }
  fields.push([2, (w) => w.string(2, graph.name)]);
  for (const init of graph.initializers.values()) {
    if (!edit.dropInitializers.has(init.name)) fields.push([5, (w) => w.bytes(5, init.bytes)]);
  }
  if (main) for (const m of edit.addInitializers) fields.push([5, (w) => writeMessage(w, 5, m)]);
  for (const f of graph.rest) fields.push([f.field, (w) => writeField(w, f)]);
  return writeInFieldOrder(fields);
}

/** Whether the edit touches anything inside the node's subgraphs. */
function graphsChanged(node: ReadNode, edit: OnnxEdit): boolean {
  const changed = (g: ReadGraph): boolean =>
    [...g.initializers.keys()].some((name) => edit.dropInitializers.has(name)) || g.nodes.some((n) => edit.replaceNodes.has(n) || graphsChanged(n, edit));
  return node.attributes.some((a) => (a.graph !== undefined && changed(a.graph)) || (a.graphs ?? []).some(changed));
}

/** A NodeProto with its subgraph attributes re-encoded, every other field as stored. */
function encodeNodeAround(node: ReadNode, edit: OnnxEdit): ProtoWriter {
  const w = new ProtoWriter();
  let attribute = 0;
  for (const f of protoFields(node.bytes)) {
    const a = f.field === 5 ? node.attributes[attribute++] : undefined;
    if (a === undefined || (a.graph === undefined && a.graphs === undefined)) {
      writeField(w, f);
      continue;
    }
    const aw = new ProtoWriter();
    let sub = 0;
    for (const af of protoFields(a.bytes)) {
      if (af.field === 6 && a.graph !== undefined) aw.message(6, encodeGraph(a.graph, edit, false));
      else if (af.field === 11 && a.graphs?.[sub] !== undefined) aw.message(11, encodeGraph(a.graphs[sub++] as ReadGraph, edit, false));
      else writeField(aw, af);
    }
    w.message(5, aw);
  }
  return w;
}

function writeInFieldOrder(fields: [number, (w: ProtoWriter) => void][]): ProtoWriter {
  const w = new ProtoWriter();
  // Array.prototype.sort is stable: repeated fields keep the order they were read in.
  for (const [, write] of [...fields].sort((a, b) => a[0] - b[0])) write(w);
  return w;
}

function writeMessage(w: ProtoWriter, field: number, m: EncodedMessage): void {
  if (m instanceof ProtoWriter) w.message(field, m);
  else w.bytes(field, m);
}

function writeField(w: ProtoWriter, f: ProtoField): void {
  if (f.wire === 1 || f.wire === 5) w.fixed(f.field, f.wire, f.bytes!);
  else if (f.bytes !== undefined) w.bytes(f.field, f.bytes);
  else if (f.value !== undefined) w.int(f.field, f.value);
}
