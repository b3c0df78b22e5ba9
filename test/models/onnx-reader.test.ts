import { readFileSync } from "node:fs";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ONNX_MODEL_PATH } from "../../src/inference/models/build-model.js";
import { floatsOf, readOnnxModel } from "../../src/inference/models/onnx-reader.js";
import { rewriteOnnxModel } from "../../src/inference/models/onnx-rewrite.js";
import { readOnnxSignature } from "../../src/inference/models/onnx-signature.js";
import { initGpt2Weights } from "../../src/inference/models/gpt2-weights.js";
import { buildTinyModel, TINY } from "./tiny-model.js";

describe("readOnnxModel", () => {
  let built: Awaited<ReturnType<typeof buildTinyModel>>;
  let file: string;
  beforeAll(async () => {
    built = await buildTinyModel();
    file = path.join(built.modelDir, ONNX_MODEL_PATH);
  });
  afterAll(() => built.cleanup());

  it("gives back every weight the builder wrote, value for value", () => {
    const model = readOnnxModel(file);
    const weights = initGpt2Weights(TINY.config, TINY.init, TINY.defaultSeed);
    for (const w of weights) {
      const init = model.initializers.get(w.name);
      expect(init, w.name).toBeDefined();
      expect(init?.dims).toEqual(w.dims);
      expect(Array.from(floatsOf(init!))).toEqual(Array.from(w.data));
    }
  });

  it("reads the graph: opsets, I/O names as the signature reader sees them, nodes with their attributes", () => {
    const model = readOnnxModel(file);
    const sig = readOnnxSignature(file);
    expect(model.irVersion).toBe(8);
    expect(model.opsets.get("")).toBe(sig.opset);
    expect(model.inputs).toEqual(sig.inputs.map((i) => i.name));
    expect(model.outputs).toEqual(sig.outputs.map((o) => o.name));
    // Every node input is a graph input, an initializer or an earlier node's output.
    const known = new Set([...model.inputs, ...model.initializers.keys()]);
    for (const node of model.nodes) {
      for (const input of node.inputs) if (input !== "") expect(known.has(input), `${node.name} reads ${input}`).toBe(true);
      for (const output of node.outputs) known.add(output);
    }
    for (const output of model.outputs) expect(known.has(output)).toBe(true);
    const layerNorms = model.nodes.filter((n) => n.op === "LayerNormalization");
    expect(layerNorms).toHaveLength(2 * TINY.config.nLayer + 1);
    const epsilon = layerNorms[0]?.attributes.find((a) => a.name === "epsilon");
    expect(epsilon?.type).toBe(1);
    expect(epsilon?.float).toBeCloseTo(1e-5, 10);
    const softmax = model.nodes.find((n) => n.op === "Softmax");
    expect(softmax?.attributes.find((a) => a.name === "axis")?.int).toBe(-1);
  });

  it("keeps what it does not decode, so that a model rewritten with no edit is the same bytes", () => {
    const model = readOnnxModel(file);
    expect(model.rest.filter((f) => f.field === 11)).toHaveLength(model.inputs.length);
    expect(model.nodes[0]?.bytes.length).toBeGreaterThan(0);
    const proto = rewriteOnnxModel(model, { replaceNodes: new Map(), dropInitializers: new Set(), addInitializers: [], addOpsets: new Map() });
    expect(Buffer.concat(proto.parts).equals(readFileSync(file))).toBe(true);
  });

  it("refuses bytes that are not a model", () => {
    expect(() => readOnnxModel(new Uint8Array([0x0a, 0x05, 0x01]))).toThrow(/malformed|truncated/);
    expect(() => readOnnxModel(new Uint8Array([0x08, 0x01]))).toThrow(/no graph/);
  });
});
