import { execFile } from "node:child_process";
import { cpSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { MODELS_DIR } from "./engine-fixture.js";

/** `npm test` builds dist/ first; run `npm run build` before running this file alone. */
const CLI = path.resolve("dist/bin/aitbc.js");

function aitbc(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof err.code === "number" ? err.code : 1;
      resolve({ code, stdout, stderr });
    });
  });
}

describe("aitbc generate", () => {
  const base = ["generate", "--model", "tiny-gpt2", "--models-dir", MODELS_DIR, "--prompt", "Hello world", "--max-new-tokens", "8"];

  it("streams the same text that --json reports, greedy", async () => {
    const json = await aitbc([...base, "--temperature", "0", "--json", "--execution-provider", "cpu"]);
    expect(json.code).toBe(0);
    const result = JSON.parse(json.stdout) as { text: string; token_ids: number[]; finish_reason: string; device: string };
    expect(result).toMatchObject({ finish_reason: "length", device: "cpu" });
    expect(result.token_ids).toHaveLength(8);
    const streamed = await aitbc([...base, "--temperature", "0", "--execution-provider", "cpu"]);
    expect(streamed.code).toBe(0);
    expect(streamed.stdout).toBe(`${result.text}\n`);
    expect(streamed.stderr).toMatch(/\[length\] 2 prompt \+ 8 completion tokens on cpu/);
  });

  it("the same seed gives the same sample", async () => {
    const args = [...base, "--temperature", "1", "--seed", "5", "--json", "--execution-provider", "cpu"];
    const [a, b] = [await aitbc(args), await aitbc(args)];
    expect(JSON.parse(a.stdout).token_ids).toEqual(JSON.parse(b.stdout).token_ids);
  });

  it("auto asked for a GPU that cannot load falls back to the CPU and says why", async () => {
    const r = await aitbc([...base, "--temperature", "0", "--json", "--execution-provider", "auto", "--device", "0", "--verbose"]);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout).device).toBe("cpu");
    expect(r.stderr).toMatch(/CUDA unavailable, running on the CPU/);
    expect(r.stderr).toMatch(/libonnxruntime_providers/);
  });

  it("refuses an out-of-range parameter with a message, not a stack trace", async () => {
    const r = await aitbc([...base, "--temperature", "5"]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/temperature/);
    expect(r.stderr).not.toMatch(/at .*\.js:\d+/);
  });
});

describe("aitbc doctor", () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(path.join(tmpdir(), "aitbc-doctor-"));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("is unhealthy (exit 1) without a valid model, healthy (exit 0) with one", async () => {
    const empty = await aitbc(["doctor", "--models-dir", dir, "--json"]);
    expect(empty.code).toBe(1);
    const bad = JSON.parse(empty.stdout) as { healthy: boolean; checks: { name: string; status: string }[] };
    expect(bad.healthy).toBe(false);
    expect(bad.checks.find((c) => c.name === "models")?.status).toBe("fail");

    cpSync(path.join(MODELS_DIR, "tiny-gpt2"), path.join(dir, "tiny-gpt2"), { recursive: true });
    const good = await aitbc(["doctor", "--models-dir", dir, "--json"]);
    const ok = JSON.parse(good.stdout) as { healthy: boolean; checks: { name: string; status: string; summary: string }[] };
    expect(good.code).toBe(0);
    expect(ok.healthy).toBe(true);
    expect(ok.checks.find((c) => c.name === "onnxruntime-cpu")?.status).toBe("ok");
    // No GPU here: the CUDA provider's absence is reported, naming the missing library.
    expect(ok.checks.find((c) => c.name === "cuda-provider")?.summary).toMatch(/libonnxruntime_providers_(shared|cuda)\.so/);
  });
});
