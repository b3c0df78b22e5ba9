import { execFile } from "node:child_process";
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync, readdirSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ModelError } from "../../src/common/errors.js";
import { ONNX_MODEL_PATH } from "../../src/inference/models/build-model.js";
import { gpt2ParameterCount } from "../../src/inference/models/gpt2-weights.js";
import { loadModelInfo } from "../../src/inference/models/model-info.js";
import { OnnxGraph, OnnxType } from "../../src/inference/models/onnx-graph.js";
import { buildTinyModel, TINY } from "./tiny-model.js";

const CLI = path.resolve("dist/bin/aitbc.js");
const run = promisify(execFile);

let modelDir: string;
let cleanup: () => void;
let scratch: string;

beforeAll(async () => {
  ({ modelDir, cleanup } = await buildTinyModel());
  scratch = mkdtempSync(path.join(os.tmpdir(), "aitbc-bad-models-"));
});
afterAll(() => {
  cleanup();
  rmSync(scratch, { recursive: true, force: true });
});

/** A copy of the good model with one thing broken. */
function broken(name: string, breakIt: (dir: string) => void): string {
  const dir = path.join(scratch, name);
  cpSync(modelDir, dir, { recursive: true });
  breakIt(dir);
  return dir;
}

function editConfig(dir: string, patch: Record<string, unknown>): void {
  const file = path.join(dir, "config.json");
  writeFileSync(file, JSON.stringify({ ...(JSON.parse(readFileSync(file, "utf8")) as object), ...patch }));
}

function refusal(dir: string): ModelError {
  try {
    loadModelInfo(dir);
  } catch (err) {
    if (err instanceof ModelError) return err;
    throw err;
  }
  throw new Error("the folder was accepted");
}

describe("loadModelInfo", () => {
  it("describes a valid folder", () => {
    const info = loadModelInfo(modelDir);
    const c = TINY.config;
    expect(info).toMatchObject({
      name: "tiny-gpt2",
      dir: modelDir,
      onnxPath: path.join(modelDir, ONNX_MODEL_PATH),
      nLayer: c.nLayer,
      nHead: c.nHead,
      nEmbd: c.nEmbd,
      headDim: c.nEmbd / c.nHead,
      nPositions: c.nPositions,
      vocabSize: c.vocabSize,
      eosTokenId: 50256,
      parameters: gpt2ParameterCount(c),
      kvType: "float32",
    });
    expect(info.inputNames).toEqual(["input_ids", "attention_mask", "position_ids", "past_key_values.0.key", "past_key_values.0.value", "past_key_values.1.key", "past_key_values.1.value"]);
    expect(info.outputNames).toEqual([
      "logits",
      "present.0.key",
      "present.0.value",
      "present.1.key",
      "present.1.value",
      "new_key_values.0.key",
      "new_key_values.0.value",
      "new_key_values.1.key",
      "new_key_values.1.value",
    ]);
    expect(info).toMatchObject({ lastLogitsOnly: true, newKeyValues: true });
    // The ONNX file alone is 4 bytes per parameter plus the graph.
    expect(info.sizeBytes).toBeGreaterThan(info.parameters * 4);
  });

  it("accepts the I/O of an optimum export: use_cache_branch, no position_ids, float16 cache", () => {
    // Only the graph signature matters to the validator, so the graph has I/O and no nodes.
    const dir = broken("optimum-like", (d) => {
      const g = new OnnxGraph("optimum", 14);
      g.input("input_ids", OnnxType.INT64, ["batch_size", "sequence_length"]);
      g.input("attention_mask", OnnxType.INT64, ["batch_size", "attention_mask_sequence_length"]);
      for (let i = 0; i < 2; i++) {
        for (const part of ["key", "value"]) g.input(`past_key_values.${i}.${part}`, OnnxType.FLOAT16, ["batch_size", 4, "past_sequence_length", 8]);
      }
      g.input("use_cache_branch", OnnxType.BOOL, [1]);
      g.output("logits", OnnxType.FLOAT16, ["batch_size", "sequence_length", 50257]);
      for (let i = 0; i < 2; i++) {
        for (const part of ["key", "value"]) g.output(`present.${i}.${part}`, OnnxType.FLOAT16, ["batch_size", 4, "past_sequence_length + 1", 8]);
      }
      writeFileSync(path.join(d, ONNX_MODEL_PATH), Buffer.concat(g.encode({ name: "optimum", version: "1" }).parts));
    });
    const info = loadModelInfo(dir);
    expect(info.kvType).toBe("float16");
    expect(info.inputNames).toContain("use_cache_branch");
    expect(info.inputNames).not.toContain("position_ids");
    expect(info).toMatchObject({ lastLogitsOnly: false, newKeyValues: false });
  });

  it.each([
    ["a missing folder", (d: string) => rmSync(d, { recursive: true }), "model_not_found", /does not exist/],
    ["a missing ONNX file", (d: string) => rmSync(path.join(d, ONNX_MODEL_PATH)), "model_file_missing", /decoder_model_merged\.onnx/],
    ["a missing tokenizer.json", (d: string) => rmSync(path.join(d, "tokenizer.json")), "model_file_missing", /tokenizer\.json/],
    ["config.json that is not JSON", (d: string) => writeFileSync(path.join(d, "config.json"), "{ n_layer: 2"), "model_config_invalid", /config\.json is not valid JSON/],
    ["a model type other than gpt2", (d: string) => editConfig(d, { model_type: "llama" }), "model_config_invalid", /model_type/],
    ["no model_max_length", (d: string) => writeFileSync(path.join(d, "tokenizer_config.json"), "{}"), "model_config_invalid", /model_max_length/],
    ["a weight format it does not know", (d: string) => editConfig(d, { aitbc: { weights: "fp7" } }), "model_config_invalid", /aitbc\.weights must be one of float32, int8/],
    ["n_layer larger than the graph", (d: string) => editConfig(d, { n_layer: 3 }), "model_io_mismatch", /past_key_values\.2\.key/],
    ["n_layer smaller than the graph", (d: string) => editConfig(d, { n_layer: 1 }), "model_io_mismatch", /unexpected input past_key_values\.1\.key/],
    ["n_head that disagrees with the cache shape", (d: string) => editConfig(d, { n_head: 8 }), "model_io_mismatch", /dimension 1 is 4, config\.json implies 8/],
    ["vocab_size that disagrees with logits", (d: string) => editConfig(d, { vocab_size: 50000, eos_token_id: 0 }), "model_io_mismatch", /logits dimension 2 is 50257/],
    ["a truncated ONNX file", (d: string) => truncateSync(path.join(d, ONNX_MODEL_PATH), 100_000), "model_onnx_invalid", /cannot be read/],
    ["an ONNX file that is not protobuf", (d: string) => writeFileSync(path.join(d, ONNX_MODEL_PATH), "<html>not found</html>"), "model_onnx_invalid", /cannot be read/],
  ])("refuses %s, naming the problem", (label, breakIt, code, message) => {
    const err = refusal(broken(label.replace(/\W+/g, "-"), breakIt));
    expect(err.code).toBe(code);
    expect(err.message).toMatch(message);
  });
});

describe("aitbc models (CLI)", () => {
  it("builds tiny-gpt2, refuses to overwrite without --force, and lists the folder as valid", async () => {
    const dir = mkdtempSync(path.join(scratch, "cli-"));
    const built = await run(process.execPath, [CLI, "models", "build", "tiny-gpt2", "--models-dir", dir, "--seed", "3"]);
    expect(built.stdout).toMatch(/built tiny-gpt2/);
    expect(loadModelInfo(path.join(dir, "tiny-gpt2")).name).toBe("tiny-gpt2");
    expect(readdirSync(dir)).toEqual(["tiny-gpt2"]); // no temp folders left behind

    const again = run(process.execPath, [CLI, "models", "build", "tiny-gpt2", "--models-dir", dir]);
    await expect(again).rejects.toMatchObject({ code: 1, stderr: expect.stringMatching(/already exists/) as unknown });
    await run(process.execPath, [CLI, "models", "build", "tiny-gpt2", "--models-dir", dir, "--force", "--seed", "4"]);
    expect(JSON.parse(readFileSync(path.join(dir, "tiny-gpt2", "config.json"), "utf8"))).toMatchObject({ aitbc: { seed: 4 } });

    cpSync(path.join(dir, "tiny-gpt2"), path.join(dir, "broken"), { recursive: true });
    rmSync(path.join(dir, "broken", "tokenizer.json"));
    const listed = await run(process.execPath, [CLI, "models", "list", "--models-dir", dir, "--json"]);
    const rows = JSON.parse(listed.stdout) as { name: string; parameters: number | null; layout: string }[];
    expect(rows).toEqual([
      { name: "broken", parameters: null, weights: null, size_bytes: null, layout: "invalid: the model folder lacks tokenizer.json" },
      { name: "tiny-gpt2", parameters: gpt2ParameterCount(TINY.config), weights: "float32", size_bytes: expect.any(Number) as unknown, layout: "ok" },
    ]);
    const table = await run(process.execPath, [CLI, "models", "list", "--models-dir", dir]);
    expect(table.stdout).toMatch(/^NAME\s+PARAMETERS\s+WEIGHTS\s+SIZE\s+LAYOUT$/m);
    expect(table.stdout).toMatch(/^tiny-gpt2\s+1\.67M\s+float32\s+7\.\d MiB\s+ok$/m);
  });

  it("builds int8 weights into <recipe>-int8 (or --name) and refuses an unknown format", async () => {
    const dir = mkdtempSync(path.join(scratch, "cli-int8-"));
    const built = await run(process.execPath, [CLI, "models", "build", "tiny-gpt2", "--models-dir", dir, "--weights", "int8"]);
    expect(built.stdout).toMatch(/built tiny-gpt2-int8 .*int8 weights/);
    await run(process.execPath, [CLI, "models", "build", "tiny-gpt2", "--models-dir", dir, "--weights", "int8", "--name", "small-int8"]);
    expect(readdirSync(dir).sort()).toEqual(["small-int8", "tiny-gpt2-int8"]);
    expect(loadModelInfo(path.join(dir, "small-int8")).weights).toBe("int8");
    const table = await run(process.execPath, [CLI, "models", "list", "--models-dir", dir]);
    expect(table.stdout).toMatch(/^tiny-gpt2-int8\s+1\.67M\s+int8\s/m);
    const bad = run(process.execPath, [CLI, "models", "build", "tiny-gpt2", "--models-dir", dir, "--weights", "fp16"]);
    await expect(bad).rejects.toMatchObject({ stderr: expect.stringMatching(/the weights must be float32 or int8/) as unknown });
  });

  it("rejects an unknown recipe", async () => {
    await expect(run(process.execPath, [CLI, "models", "build", "gpt5", "--models-dir", scratch])).rejects.toMatchObject({
      code: 64, // a usage error (src/bin/exit-codes.ts)
      stderr: expect.stringMatching(/no built-in model named gpt5/) as unknown,
    });
    expect(existsSync(path.join(scratch, "gpt5"))).toBe(false);
  });
});
