import { readOnnxModel } from "../../src/inference/models/onnx-reader.js";
import { protoFields } from "../../src/inference/models/proto-reader.js";
import { ProtoWriter } from "../../src/inference/models/proto-writer.js";

const text = new TextDecoder();

/**
 * An ONNX model in the shape of optimum's real `decoder_model_merged.onnx`, made from one of our
 * optimum-layout graphs: the weights stay initializers of the main graph, which gains a
 * `use_cache_branch` bool [1] input and holds a single If node whose two branches each hold
 * the whole computation (reading the weights and inputs from the outer scope, their own values
 * prefixed with the branch's name). So matmuls sit inside subgraphs, as in a real export.
 */
export function mergedDecoderOf(file: string): Uint8Array {
  const m = readOnnxModel(file);
  const produced = new Set(m.nodes.flatMap((n) => n.outputs));
  const branch = (prefix: string): ProtoWriter => {
    const rename = (name: string): string => (produced.has(name) ? `${prefix}/${name}` : name);
    const g = new ProtoWriter();
    for (const n of m.nodes) {
      const w = new ProtoWriter();
      for (const i of n.inputs) w.string(1, rename(i));
      for (const o of n.outputs) w.string(2, rename(o));
      w.string(3, `${prefix}${n.name}`).string(4, n.op);
      for (const a of n.attributes) w.bytes(5, a.bytes);
      if (n.domain !== "") w.string(7, n.domain);
      g.message(1, w);
    }
    g.string(2, `${prefix}_graph`);
    for (const f of m.rest) {
      if (f.field !== 12 || f.bytes === undefined) continue;
      const v = new ProtoWriter();
      for (const vf of protoFields(f.bytes)) {
        if (vf.field === 1 && vf.bytes !== undefined) v.string(1, rename(text.decode(vf.bytes)));
        else if (vf.bytes !== undefined) v.bytes(vf.field, vf.bytes);
      }
      g.message(12, v);
    }
    return g;
  };
  const graphAttribute = (name: string, g: ProtoWriter): ProtoWriter => new ProtoWriter().string(1, name).message(6, g).int(20, 5);
  const ifNode = new ProtoWriter().string(1, "use_cache_branch");
  for (const o of m.outputs) ifNode.string(2, o);
  ifNode.string(3, "optimum::if").string(4, "If").message(5, graphAttribute("else_branch", branch("no_past"))).message(5, graphAttribute("then_branch", branch("with_past")));

  const graph = new ProtoWriter().message(1, ifNode).string(2, "main_graph");
  for (const init of m.initializers.values()) graph.bytes(5, init.bytes);
  for (const f of m.rest) if (f.field === 11 && f.bytes !== undefined) graph.bytes(11, f.bytes);
  // use_cache_branch: bool [1].
  const boolType = new ProtoWriter().message(1, new ProtoWriter().int(1, 9).message(2, new ProtoWriter().message(1, new ProtoWriter().int(1, 1))));
  graph.message(11, new ProtoWriter().string(1, "use_cache_branch").message(2, boolType));
  for (const f of m.rest) if (f.field === 12 && f.bytes !== undefined) graph.bytes(12, f.bytes);

  const model = new ProtoWriter().int(1, m.irVersion ?? 8).string(2, "optimum-like").message(7, graph);
  for (const f of m.modelRest) if (f.field === 8 && f.bytes !== undefined) model.bytes(8, f.bytes);
  return Buffer.concat(model.parts);
}
