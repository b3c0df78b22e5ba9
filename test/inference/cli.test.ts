import { execFile } from "node:child_process";
import { chmodSync, cpSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { checkCudaProvider, describeCudaProviderProblem } from "../../src/inference/cuda-provider.js";
import { MODELS_DIR, NO_SUCH_DEVICE, expectCudaFailureReason } from "./engine-fixture.js";

/** `npm test` builds dist/ first; run `npm run build` before running this file alone. */
const CLI = path.resolve("dist/bin/aitbc.js");

function aitbc(args: string[], env: NodeJS.ProcessEnv = process.env): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { maxBuffer: 16 << 20, env }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof err.code === "number" ? err.code : 1;
      resolve({ code, stdout, stderr });
    });
  });
}

/** The JSON log lines (pino) of a command's stderr. */
function logLines(stderr: string): Record<string, unknown>[] {
  return stderr
    .split("\n")
    .filter((l) => l.startsWith("{"))
    .map((l) => JSON.parse(l) as Record<string, unknown>);
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

  it("auto asked for a GPU that CUDA cannot run falls back to the CPU and says why", async () => {
    const r = await aitbc([...base, "--temperature", "0", "--json", "--execution-provider", "auto", "--device", String(NO_SUCH_DEVICE), "--verbose"]);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout).device).toBe("cpu");
    const fallback = logLines(r.stderr).find((l) => l.msg === "CUDA unavailable, running on the CPU");
    expect(fallback).toMatchObject({ device: `cuda:${NO_SUCH_DEVICE}` });
    expectCudaFailureReason(fallback?.reason);
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
  /** The environment of a host without a GPU, on any host: first on PATH, an nvidia-smi that finds no driver. */
  let withoutGpu: NodeJS.ProcessEnv;
  beforeAll(() => {
    dir = mkdtempSync(path.join(tmpdir(), "aitbc-doctor-"));
    const bin = path.join(dir, "bin");
    mkdirSync(bin);
    const smi = path.join(bin, "nvidia-smi");
    writeFileSync(smi, `#!/bin/sh\ncat '${path.join(import.meta.dirname, "..", "fixtures", "nvidia-smi", "no-driver.txt")}'\nexit 9\n`);
    chmodSync(smi, 0o755);
    withoutGpu = { ...process.env, PATH: `${bin}${path.delimiter}${process.env.PATH ?? ""}` };
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("is unhealthy (exit 1) without a valid model, healthy (exit 0) with one", async () => {
    const empty = await aitbc(["doctor", "--models-dir", dir, "--json", "--no-coordinator"], withoutGpu);
    expect(empty.code).toBe(1);
    const bad = JSON.parse(empty.stdout) as { healthy: boolean; checks: { name: string; status: string }[] };
    expect(bad.healthy).toBe(false);
    expect(bad.checks.find((c) => c.name === "models")?.status).toBe("fail");

    cpSync(path.join(MODELS_DIR, "tiny-gpt2"), path.join(dir, "tiny-gpt2"), { recursive: true });
    const good = await aitbc(["doctor", "--models-dir", dir, "--json", "--no-coordinator"], withoutGpu);
    const ok = JSON.parse(good.stdout) as { healthy: boolean; checks: { name: string; status: string; summary: string }[] };
    expect(good.code).toBe(0);
    expect(ok.healthy).toBe(true);
    expect(ok.checks.find((c) => c.name === "gpus")?.status).toBe("warn");
    expect(ok.checks.find((c) => c.name === "onnxruntime-cpu")?.status).toBe("ok");
    // No GPU seen, so the CUDA provider is not needed: what is missing of it is reported (here,
    // its files), or on a host after npm run setup:cuda, that it is installed.
    const missing = describeCudaProviderProblem(checkCudaProvider());
    expect(ok.checks.find((c) => c.name === "cuda-provider")).toMatchObject(
      missing === "" ? { status: "ok", summary: "CUDA provider libraries installed; no GPU to try them on" } : { status: "warn", summary: missing },
    );
  });
});
