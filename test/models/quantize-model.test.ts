import { execFile } from "node:child_process";
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import * as ort from "onnxruntime-node";
import { Prng } from "../../src/common/prng.js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ONNX_MODEL_PATH } from "../../src/inference/models/build-model.js";
import { NEW_KEY_VALUES } from "../../src/inference/models/model-io.js";
import { loadModelInfo } from "../../src/inference/models/model-info.js";
import { MS_DOMAIN, OnnxGraph, OnnxType } from "../../src/inference/models/onnx-graph.js";
import { readOnnxModel } from "../../src/inference/models/onnx-reader.js";
import { dequantizeInt8, INT8_DEFAULTS, int8BlockSize, quantizeInt8, type Int8Weight } from "../../src/inference/models/quantize-int8.js";
import { quantizeModel, quantizeOnnxModel } from "../../src/inference/models/quantize-model.js";
import { mergedDecoderOf } from "./merged-decoder.js";
import { buildTinyModel, TINY } from "./tiny-model.js";

const C = TINY.config;
/** The matmuls int8 takes by default: four per layer and the lm_head, less the first layer's four (INT8_DEFAULTS.float32Layers). */
const QUANTIZED = 4 * (C.nLayer - 1) + 1;
const D = C.nEmbd / C.nHead;
/** `npm test` builds dist/ first; run `npm run build` before running this file alone. */
const CLI = path.resolve("dist/bin/aitbc.js");

const int64 = (rows: number[][]): ort.Tensor => new ort.Tensor("int64", BigInt64Array.from(rows.flat().map(BigInt)), [rows.length, rows[0]!.length]);

/** One run over `ids` after `past` (null: none): logits and the new cache. */
async function run(session: ort.InferenceSession, ids: number[], past: Record<string, ort.Tensor> | null): Promise<{ logits: Float32Array; present: Record<string, ort.Tensor> }> {
  const pastLen = past === null ? 0 : past["past_key_values.0.key"]!.dims[2]!;
  const feeds: Record<string, ort.Tensor> = {
    input_ids: int64([ids]),
    attention_mask: int64([Array.from({ length: pastLen + ids.length }, () => 1)]),
    position_ids: int64([ids.map((_, i) => pastLen + i)]),
  };
  for (let i = 0; i < C.nLayer; i++) {
    for (const part of ["key", "value"]) {
      const name = `past_key_values.${i}.${part}`;
      feeds[name] = past?.[name] ?? new ort.Tensor("float32", new Float32Array(0), [1, C.nHead, 0, D]);
    }
  }
  // optimum's merged decoder (mergedDecoderOf): its If takes the branch for a past or none.
  if (session.inputNames.includes("use_cache_branch")) feeds.use_cache_branch = new ort.Tensor("bool", Uint8Array.of(past === null ? 0 : 1), [1]);
  const out = await session.run(feeds);
  const present: Record<string, ort.Tensor> = {};
  for (let i = 0; i < C.nLayer; i++) for (const part of ["key", "value"]) present[`past_key_values.${i}.${part}`] = out[`present.${i}.${part}`]!;
  return { logits: out.logits!.data as Float32Array, present };
}

/** Largest |a − b| relative to the largest |b|. */
function relDiff(a: Float32Array, b: Float32Array): number {
  expect(a.length).toBe(b.length);
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < a.length; i++) {
    diff = Math.max(diff, Math.abs(a[i]! - b[i]!));
    scale = Math.max(scale, Math.abs(b[i]!));
  }
  return diff / scale;
}

const PROMPTS = [[464, 2068, 7586, 21831, 18045], [15496, 995], [50256, 40, 588, 340, 11, 290, 314, 1101]];

/** The quantized model's logits against those of the same tiny-gpt2 built with --weights int8: a prompt, then two single-token steps. */
async function expectSameLogits(quantized: string, direct: string): Promise<void> {
  const [q, d] = await Promise.all([ort.InferenceSession.create(path.join(quantized, ONNX_MODEL_PATH)), ort.InferenceSession.create(path.join(direct, ONNX_MODEL_PATH))]);
  try {
    for (const prompt of PROMPTS) {
      let a = await run(q, prompt, null);
      let b = await run(d, prompt, null);
      expect(relDiff(a.logits, b.logits)).toBeLessThan(1e-5);
      for (const token of [262, 11571]) {
        a = await run(q, [token], a.present);
        b = await run(d, [token], b.present);
        expect(relDiff(a.logits, b.logits)).toBeLessThan(1e-5);
      }
    }
  } finally {
    await Promise.all([q.release(), d.release()]);
  }
}

describe("quantizeModel", () => {
  let scratch: string;
  let float32: Awaited<ReturnType<typeof buildTinyModel>>;
  let int8: Awaited<ReturnType<typeof buildTinyModel>>;
  let optimum: Awaited<ReturnType<typeof buildTinyModel>>;
  let optimumInt8: Awaited<ReturnType<typeof buildTinyModel>>;
  beforeAll(async () => {
    scratch = mkdtempSync(path.join(os.tmpdir(), "aitbc-quantize-"));
    [float32, int8, optimum, optimumInt8] = await Promise.all([
      buildTinyModel(),
      buildTinyModel({ weights: "int8" }),
      buildTinyModel({ layout: "optimum" }),
      buildTinyModel({ layout: "optimum", weights: "int8" }),
    ]);
  });
  afterAll(() => {
    rmSync(scratch, { recursive: true, force: true });
    for (const built of [float32, int8, optimum, optimumInt8]) built.cleanup();
  });

  it("turns float32 tiny-gpt2 into what --weights int8 builds: the same int8 bytes, the same logits", async () => {
    const out = path.join(scratch, "tiny-gpt2-int8");
    const result = await quantizeModel(float32.modelDir, out);
    // Four Conv1D matmuls per layer and the lm_head (a MatMul against Transpose(wte)), but those of the first layer.
    expect(INT8_DEFAULTS.float32Layers).toBe(1);
    expect(result.matmuls).toHaveLength(QUANTIZED);
    expect(result.matmuls.some((m) => m.weight.startsWith("transformer.h.0."))).toBe(false);
    expect(result.keptFloat32).toHaveLength(4);
    expect(result.float32Layers).toBe(1);
    expect(result.matmuls.at(-1)).toMatchObject({ weight: "transformer.wte.weight", k: C.nEmbd, n: C.vocabSize });
    // The default block size, or the largest smaller one that divides K, as --weights int8 picks it.
    for (const m of result.matmuls) expect(m.blockSize, m.node).toBe(int8BlockSize(m.k));
    expect(result).toMatchObject({ dir: out, blockSize: INT8_DEFAULTS.blockSize, accuracyLevel: INT8_DEFAULTS.accuracyLevel });

    const info = loadModelInfo(out);
    expect(info.weights).toBe("int8");
    expect(info.newKeyValues).toBe(true);
    const config = JSON.parse(readFileSync(path.join(out, "config.json"), "utf8")) as Record<string, unknown>;
    expect(config.aitbc).toMatchObject({ recipe: "tiny-gpt2", weights: "int8", int8: { block_size: INT8_DEFAULTS.blockSize, accuracy_level: INT8_DEFAULTS.accuracyLevel, float32_layers: 1, quantized_from: "tiny-gpt2" } });
    for (const file of ["tokenizer.json", "tokenizer_config.json", "generation_config.json"]) {
      expect(readFileSync(path.join(out, file)).equals(readFileSync(path.join(float32.modelDir, file))), file).toBe(true);
    }

    const ours = readOnnxModel(path.join(out, ONNX_MODEL_PATH));
    const theirs = readOnnxModel(path.join(int8.modelDir, ONNX_MODEL_PATH));
    expect(ours.opsets.get(MS_DOMAIN)).toBe(1);
    expect(ours.nodes.filter((n) => n.op === "MatMulNBits")).toHaveLength(QUANTIZED);
    // Only the first layer's float matmul weights are left, not the lm_head's Transpose; wte stays for the embedding lookup.
    expect(ours.nodes.some((n) => n.op === "Transpose" && n.inputs[0] === "transformer.wte.weight")).toBe(false);
    expect(ours.initializers.has("transformer.h.1.attn.c_attn.weight")).toBe(false);
    expect(ours.initializers.has("transformer.h.0.attn.c_attn.weight")).toBe(true);
    expect(ours.initializers.has("transformer.h.0.attn.c_attn.weight.int8")).toBe(false);
    expect(ours.nodes.filter((n) => n.op === "MatMul" && n.inputs[1]?.startsWith("transformer.h.0."))).toHaveLength(4);
    expect(ours.initializers.has("transformer.wte.weight")).toBe(true);
    for (const [name, init] of theirs.initializers) {
      if (!/\.(int8|scales|zero_points)$/.test(name)) continue;
      expect(Buffer.from(ours.initializers.get(name)?.raw ?? []).equals(Buffer.from(init.raw)), name).toBe(true);
    }
    // Nodes other than the matmuls come through unchanged.
    const layerNorm = (m: typeof ours): Uint8Array[] => m.nodes.filter((n) => n.op === "LayerNormalization").map((n) => n.bytes);
    expect(layerNorm(ours)).toEqual(layerNorm(readOnnxModel(path.join(float32.modelDir, ONNX_MODEL_PATH))));

    await expectSameLogits(out, int8.modelDir);
  });

  it("quantizes optimum's layout (logits for every position) and the result runs", async () => {
    const out = path.join(scratch, "optimum-int8");
    const result = await quantizeModel(optimum.modelDir, out);
    expect(result.matmuls).toHaveLength(QUANTIZED);
    const info = loadModelInfo(out);
    expect(info).toMatchObject({ weights: "int8", lastLogitsOnly: false, newKeyValues: false });
    expect(info.outputNames.some((n) => n.startsWith(NEW_KEY_VALUES))).toBe(false);
    await expectSameLogits(out, optimumInt8.modelDir);
  });

  it("quantizes the matmuls inside an If's branches, as in a real merged decoder, each weight once", async () => {
    const merged = path.join(scratch, "merged");
    cpSync(optimum.modelDir, merged, { recursive: true });
    writeFileSync(path.join(merged, ONNX_MODEL_PATH), mergedDecoderOf(path.join(optimum.modelDir, ONNX_MODEL_PATH)));
    expect(loadModelInfo(merged).inputNames).toContain("use_cache_branch");
    // The fixture itself computes what the graph it wraps does.
    await expectSameLogits(merged, optimum.modelDir);

    const out = path.join(scratch, "merged-int8");
    const result = await quantizeModel(merged, out);
    expect(result.matmuls).toHaveLength(2 * QUANTIZED);
    expect(new Set(result.matmuls.map((m) => m.weight)).size).toBe(QUANTIZED);
    expect(result.keptFloat32).toHaveLength(2 * 4);
    const model = readOnnxModel(path.join(out, ONNX_MODEL_PATH));
    expect(model.nodes.map((n) => n.op)).toEqual(["If"]);
    for (const branch of model.nodes[0]!.attributes) {
      const nodes = branch.graph?.nodes ?? [];
      expect(nodes.filter((n) => n.op === "MatMulNBits"), branch.name).toHaveLength(QUANTIZED);
      expect(nodes.some((n) => n.op === "Transpose" && n.inputs[0] === "transformer.wte.weight")).toBe(false);
    }
    expect(model.initializers.has("transformer.h.1.mlp.c_fc.weight")).toBe(false);
    expect(model.initializers.has("transformer.h.1.mlp.c_fc.weight.int8")).toBe(true);
    await expectSameLogits(out, optimumInt8.modelDir);
  });

  it("refuses a folder that is not a float32 GPT-2 model, and an existing output without force", async () => {
    await expect(quantizeModel(int8.modelDir, path.join(scratch, "twice"))).rejects.toMatchObject({ code: "model_not_float32" });
    await expect(quantizeModel(path.join(scratch, "nothing-here"), path.join(scratch, "x"))).rejects.toMatchObject({ code: "model_not_found" });
    const out = path.join(scratch, "existing");
    await quantizeModel(float32.modelDir, out, { blockSize: 16 });
    await expect(quantizeModel(float32.modelDir, out)).rejects.toMatchObject({ code: "model_exists" });
    expect(JSON.parse(readFileSync(path.join(out, "config.json"), "utf8"))).toMatchObject({ aitbc: { int8: { block_size: 16 } } });
    await quantizeModel(float32.modelDir, out, { force: true, blockSize: 32, accuracyLevel: 0 });
    expect(JSON.parse(readFileSync(path.join(out, "config.json"), "utf8"))).toMatchObject({ aitbc: { int8: { block_size: 32, accuracy_level: 0 } } });
  });

  it("quantizes every matmul with float32Layers 0, and keeps as many layers as asked", async () => {
    const all = await quantizeModel(float32.modelDir, path.join(scratch, "all-int8"), { float32Layers: 0 });
    expect(all.matmuls).toHaveLength(4 * C.nLayer + 1);
    expect(all.keptFloat32).toEqual([]);
    expect(JSON.parse(readFileSync(path.join(all.dir, "config.json"), "utf8"))).toMatchObject({ aitbc: { int8: { float32_layers: 0 } } });
    const model = readOnnxModel(path.join(all.dir, ONNX_MODEL_PATH));
    expect(model.nodes.filter((n) => n.op === "MatMulNBits")).toHaveLength(4 * C.nLayer + 1);
    expect(model.initializers.has("transformer.h.0.attn.c_attn.weight")).toBe(false);
    const two = await quantizeModel(float32.modelDir, path.join(scratch, "two-float32"), { float32Layers: 2 });
    expect(two.matmuls.map((m) => m.weight)).toEqual(["transformer.wte.weight"]);
    expect(two.keptFloat32).toHaveLength(8);

    // Each layer kept in float32 brings the logits closer to the float32 model's.
    const one = await quantizeModel(float32.modelDir, path.join(scratch, "one-float32"), { float32Layers: 1 });
    const distance = async (dir: string): Promise<number> => {
      const [q, f] = await Promise.all([ort.InferenceSession.create(path.join(dir, ONNX_MODEL_PATH)), ort.InferenceSession.create(path.join(float32.modelDir, ONNX_MODEL_PATH))]);
      try {
        let sum = 0;
        for (const prompt of PROMPTS) sum += relDiff((await run(q, prompt, null)).logits, (await run(f, prompt, null)).logits);
        return sum;
      } finally {
        await Promise.all([q.release(), f.release()]);
      }
    };
    const [d0, d1, d2] = [await distance(all.dir), await distance(one.dir), await distance(two.dir)];
    expect(d1).toBeLessThan(d0);
    expect(d2).toBeLessThan(d1);
  });
});

describe("quantizeOnnxModel on Gemm and MatMul", () => {
  it("runs Gemm (B as stored or transposed, with a bias) and MatMul as MatMulNBits over the dequantized weights", async () => {
    const [m, k, n] = [3, 64, 5];
    const prng = new Prng(7);
    const random = (count: number): Float32Array => Float32Array.from({ length: count }, () => prng.next() - 0.5);
    const [wKn, wNk, bias, x] = [random(k * n), random(n * k), random(n), random(m * k)];
    const g = new OnnxGraph("gemms", 17);
    g.input("x", OnnxType.FLOAT, [m, k]);
    for (const name of ["gemm", "gemm_t", "matmul"]) g.output(name, OnnxType.FLOAT, [m, n]);
    g.node("Gemm", ["x", g.floatInit("w_kn", [k, n], wKn), g.floatInit("bias", [n], bias)], { outputs: ["gemm"] });
    g.node("Gemm", ["x", g.floatInit("w_nk", [n, k], wNk)], { outputs: ["gemm_t"], attributes: { transB: 1 } });
    g.node("MatMul", ["x", "w_kn"], { outputs: ["matmul"] });
    const bytes = Buffer.concat(g.encode({ name: "test", version: "0" }).parts);

    // Level 0 dequantizes to float32, so the result is x · dequantized W (+ bias) up to float rounding.
    const { proto, matmuls } = quantizeOnnxModel(readOnnxModel(bytes), { blockSize: 32, accuracyLevel: 0, float32Layers: 1 });
    expect(matmuls.map((q) => [q.op, q.weight, q.k, q.n, q.blockSize])).toEqual([
      ["Gemm", "w_kn", k, n, 32],
      ["Gemm", "w_nk", k, n, 32],
      ["MatMul", "w_kn", k, n, 32],
    ]);
    const session = await ort.InferenceSession.create(Buffer.concat(proto.parts));
    try {
      const out = await session.run({ x: new ort.Tensor("float32", x, [m, k]) });
      const expected = (w: Int8Weight, b?: Float32Array): Float32Array => {
        const y = new Float32Array(m * n);
        for (let r = 0; r < m; r++) for (let c = 0; c < n; c++) {
          let sum = b?.[c] ?? 0;
          for (let j = 0; j < k; j++) sum += x[r * k + j]! * dequantizeInt8(w, j, c);
          y[r * n + c] = sum;
        }
        return y;
      };
      const qKn = quantizeInt8(wKn, k, n, "kn", 32);
      expect(relDiff(out.gemm!.data as Float32Array, expected(qKn, bias))).toBeLessThan(1e-5);
      expect(relDiff(out.gemm_t!.data as Float32Array, expected(quantizeInt8(wNk, k, n, "nk", 32)))).toBeLessThan(1e-5);
      expect(relDiff(out.matmul!.data as Float32Array, expected(qKn))).toBeLessThan(1e-5);
    } finally {
      await session.release();
    }
    // One int8 copy of w_kn serves both of its readers; the float weights are gone.
    const model = readOnnxModel(Buffer.concat(proto.parts));
    expect([...model.initializers.keys()].sort()).toEqual(["bias", "w_kn.int8", "w_kn.scales", "w_kn.zero_points", "w_nk.int8", "w_nk.scales", "w_nk.zero_points"]);
  });

  it("keeps a first-layer matmul float32 by its node's name when its weight's name does not say (torch's exports)", () => {
    const [k, n] = [64, 8];
    const g = new OnnxGraph("exported", 17);
    g.input("x", OnnxType.FLOAT, [1, k]);
    g.output("h0", OnnxType.FLOAT, [1, n]);
    g.output("h1", OnnxType.FLOAT, [1, n]);
    const weight = Float32Array.from({ length: k * n }, (_, i) => Math.sin(i));
    g.node("MatMul", ["x", g.floatInit("onnx::MatMul_101", [k, n], weight)], { outputs: ["h0"], name: "/transformer/h.0/attn/c_attn/MatMul" });
    g.node("MatMul", ["x", g.floatInit("onnx::MatMul_102", [k, n], weight)], { outputs: ["h1"], name: "/transformer/h.1/attn/c_attn/MatMul" });
    const model = readOnnxModel(Buffer.concat(g.encode({ name: "test", version: "0" }).parts));
    const kept = quantizeOnnxModel(model, { blockSize: 32, accuracyLevel: 4, float32Layers: 1 });
    expect(kept.keptFloat32).toEqual(["/transformer/h.0/attn/c_attn/MatMul"]);
    expect(kept.matmuls.map((m) => m.weight)).toEqual(["onnx::MatMul_102"]);
    const none = quantizeOnnxModel(model, { blockSize: 32, accuracyLevel: 4, float32Layers: 0 });
    expect(none.keptFloat32).toEqual([]);
    expect(none.matmuls.map((m) => m.weight)).toEqual(["onnx::MatMul_101", "onnx::MatMul_102"]);
    const both = quantizeOnnxModel(model, { blockSize: 32, accuracyLevel: 4, float32Layers: 2 });
    expect(both.matmuls).toEqual([]);
  });
});

describe("aitbc models quantize", () => {
  let modelsDir: string;
  let cleanup: () => void;
  beforeAll(async () => {
    ({ modelsDir, cleanup } = await buildTinyModel());
  });
  afterAll(() => cleanup());

  const aitbc = (args: string[]): Promise<{ code: number; stdout: string; stderr: string }> =>
    new Promise((resolve) => {
      execFile(process.execPath, [CLI, "models", "quantize", ...args], { maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
        resolve({ code: err === null ? 0 : typeof err.code === "number" ? err.code : 1, stdout, stderr });
      });
    });

  it("writes <model>-int8 beside the model, says what it did, and refuses to overwrite it without --force", async () => {
    const first = await aitbc(["tiny-gpt2", "--models-dir", modelsDir]);
    expect(first.code, first.stderr).toBe(0);
    const blocks = [...new Set([int8BlockSize(4 * C.nEmbd), int8BlockSize(C.nEmbd)])].join("/");
    expect(first.stdout).toMatch(new RegExp(`^quantized tiny-gpt2 into .*tiny-gpt2-int8: 5 matmuls to int8 \\(block ${blocks}, accuracy level ${INT8_DEFAULTS.accuracyLevel}, 4 of the first layer kept float32\\), [\\d.]+ MiB → [\\d.]+ MiB, [\\d.]+ s\\n$`));
    expect(loadModelInfo(path.join(modelsDir, "tiny-gpt2-int8")).weights).toBe("int8");

    const again = await aitbc(["tiny-gpt2", "--models-dir", modelsDir]);
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(/already exists \(use --force to replace it\)/);
    const forced = await aitbc([path.join(modelsDir, "tiny-gpt2"), "--force", "--block-size", "16", "--accuracy-level", "0", "--float32-layers", "0"]);
    expect(forced.code, forced.stderr).toBe(0);
    expect(forced.stdout).toMatch(/: 9 matmuls to int8 \(block 16, accuracy level 0\)/);
    const bad = await aitbc([path.join(modelsDir, "tiny-gpt2"), "--force", "--float32-layers", "-1"]);
    expect(bad.code).toBe(64);
    expect(bad.stderr).toMatch(/the float32 layers must be a whole number from 0/);
  });

  it("refuses a folder that is not a float32 GPT-2 export with a clear message and no stack trace", async () => {
    const bad = path.join(modelsDir, "not-gpt2");
    cpSync(path.join(modelsDir, "tiny-gpt2"), bad, { recursive: true });
    writeFileSync(path.join(bad, "config.json"), JSON.stringify({ model_type: "llama" }));
    const cases: [string[], RegExp][] = [
      [["not-gpt2", "--models-dir", modelsDir], /cannot quantize .*not-gpt2: config.json model_type must be "gpt2"/],
      [["missing", "--models-dir", modelsDir], /cannot quantize .*missing: the model folder does not exist/],
      [["tiny-gpt2-int8", "--models-dir", modelsDir], /the model is not a float32 export/],
    ];
    // tiny-gpt2-int8 exists once the test above has run; make sure it does either way.
    if (!existsSync(path.join(modelsDir, "tiny-gpt2-int8"))) await quantizeModel(path.join(modelsDir, "tiny-gpt2"), path.join(modelsDir, "tiny-gpt2-int8"));
    for (const [args, message] of cases) {
      const r = await aitbc(args);
      expect(r.code, args.join(" ")).toBe(1);
      expect(r.stderr).toMatch(message);
      expect(r.stderr).not.toMatch(/at .*\.js:\d+/);
    }
    const usage = await aitbc(["tiny-gpt2", "--models-dir", modelsDir, "--block-size", "48"]);
    expect(usage.code).toBe(64);
    expect(usage.stderr).toMatch(/the block size must be one of 16, 32, 64, 128, 256/);
    const level = await aitbc(["tiny-gpt2", "--models-dir", modelsDir, "--accuracy-level", "7"]);
    expect(level.code).toBe(64);
    const itself = await aitbc(["tiny-gpt2", "--models-dir", modelsDir, "--out", path.join(modelsDir, "tiny-gpt2")]);
    expect(itself.code).toBe(64);
    expect(itself.stderr).toMatch(/--out names the model folder itself/);
  });
});
