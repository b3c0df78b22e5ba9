import { spawn, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import path from "node:path";
import { afterEach, beforeAll, describe, expect, it } from "vitest";
import { assembleResult } from "../../src/protocol/frames.js";
import { FakeCoordinator } from "./fake-coordinator.js";

/**
 * `aitbc miner` with the real OnnxEngine on CPU (this machine has no GPU) and the built-in
 * tiny-gpt2 model (built by postinstall, or `aitbc models build tiny-gpt2`), against a fake
 * coordinator: the whole miner path with real inference.
 */
const ROOT = path.join(import.meta.dirname, "..", "..");
const CLI = path.join(ROOT, "dist", "bin", "aitbc.js");
const MODEL = path.join(ROOT, "models", "tiny-gpt2", "config.json");

beforeAll(() => {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run npm run build`);
  if (!existsSync(MODEL)) throw new Error(`${MODEL} is missing: run aitbc models build tiny-gpt2`);
});

let child: ChildProcess | undefined;
let coordinator: FakeCoordinator | undefined;
afterEach(async () => {
  if (child && child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  await coordinator?.close();
});

describe("aitbc miner with the ONNX engine", () => {
  it("runs a job end to end and gives the same output for the same seed", async () => {
    coordinator = await FakeCoordinator.start();
    child = spawn(process.execPath, [CLI, "miner", "--coordinator", coordinator.url, "--cpu"], {
      cwd: ROOT,
      env: {
        ...process.env,
        AITBC_MINER_COORDINATOR_KEY: coordinator.key,
        AITBC_MINER_INFERENCE_MODELS: '["tiny-gpt2"]',
        AITBC_MINER_INFERENCE_EXECUTION_PROVIDER: "cpu",
        AITBC_MINER_MINER_MAX_CONCURRENT: "1",
      },
      stdio: "ignore",
    });
    const exited = new Promise<number | null>((resolve) => child!.on("exit", (code) => resolve(code)));
    const hello = await coordinator.waitForType("hello", () => true, 60_000);
    expect(hello.models).toEqual(["tiny-gpt2"]);
    expect(hello.gpus).toEqual([]);
    const params = { max_new_tokens: 16, temperature: 0.8, top_k: 40, top_p: 0.95, repetition_penalty: 1, stop: [], seed: 42 };
    coordinator.enqueue({ job_id: "job_onnx", prompt: "Hello world, this is", parameters: params }, 1);
    coordinator.enqueue({ job_id: "job_onnx", prompt: "Hello world, this is", parameters: params }, 2);
    const first = await coordinator.waitForType("result", (r) => r.attempt === 1, 60_000);
    const second = await coordinator.waitForType("result", (r) => r.attempt === 2, 60_000);
    expect(first.finish_reason === "length" || first.finish_reason === "eos").toBe(true);
    expect(first.usage.completion_tokens).toBeGreaterThan(0);
    expect(first.usage.completion_tokens).toBeLessThanOrEqual(16);
    expect(assembleResult(first).ok).toBe(true);
    expect(second.sha256).toBe(first.sha256);
    expect(coordinator.frames("progress").some((p) => p.max_tokens === 16)).toBe(true);
    child.kill("SIGTERM");
    expect(await exited).toBe(0);
  });
});
