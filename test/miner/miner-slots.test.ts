import path from "node:path";
import { Value } from "@sinclair/typebox/value";
import { afterEach, describe, expect, it } from "vitest";
import { Backoff } from "../../src/common/backoff.js";
import { silentLogger } from "../../src/common/logger.js";
import { compileMinerConfig, MinerConfigSchema, type MinerConfigRaw } from "../../src/miner/config.js";
import { minerConcurrency } from "../../src/miner/default-concurrency.js";
import { createEngine } from "../../src/miner/engine-factory.js";
import { Miner } from "../../src/miner/miner.js";
import { FakeCoordinator } from "./fake-coordinator.js";

/**
 * The slots a miner announces are the ones it runs: with the concurrency left to the hardware,
 * a CPU miner with the real ONNX engine and tiny-gpt2 says hello with the default chosen for
 * this host (several, not 1), pulls that many, and runs that many jobs at once.
 */
const ROOT = path.join(import.meta.dirname, "..", "..");

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function start(edit: (raw: MinerConfigRaw) => void = () => undefined): Promise<{ coordinator: FakeCoordinator; miner: Miner; expected: number }> {
  const coordinator = await FakeCoordinator.start();
  const raw = Value.Default(MinerConfigSchema, {}) as MinerConfigRaw;
  raw.coordinator.url = coordinator.url;
  raw.coordinator.key = coordinator.key;
  raw.miner.progress_interval = "0ms";
  raw.inference.execution_provider = "cpu";
  raw.inference.models_dir = path.join(ROOT, "models");
  raw.inference.models = ["tiny-gpt2"];
  edit(raw);
  const config = compileMinerConfig(raw, undefined);
  const log = silentLogger();
  const miner = new Miner({ config, engine: createEngine(config, [], log), gpus: [], log, backoff: new Backoff({ baseMs: 20, maxMs: 100 }) });
  cleanups.push(async () => {
    await miner.stop({ graceMs: 0 });
    await coordinator.close();
  });
  await miner.start();
  return { coordinator, miner, expected: minerConcurrency(config, []).slots };
}

async function until(cond: () => boolean, timeoutMs = 30_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error("condition not met in time");
    await new Promise((r) => setTimeout(r, 5));
  }
}

describe("a miner's slots", () => {
  it("left to the hardware: hello announces the chosen slots, the miner pulls and runs that many at once", async () => {
    const { coordinator, miner, expected } = await start();
    // tiny-gpt2's KV cache is 0.5 MiB a sequence: only max_batch or the cores bound it, never to 1.
    expect(expected).toBeGreaterThan(1);
    expect(miner.slots).toBe(expected);
    expect(miner.slotsReason).toMatch(/CPU cores?, .* GiB free, tiny-gpt2: \d+ \(/);
    const hello = await coordinator.waitForType("hello");
    expect(hello).toMatchObject({ slots: expected, free_slots: expected, gpus: [], models: ["tiny-gpt2"] });
    expect((await coordinator.waitForType("pull")).free_slots).toBe(expected);

    const params = { max_new_tokens: 400, temperature: 0, top_k: 0, top_p: 1, repetition_penalty: 1, stop: [], seed: 1 };
    for (let i = 0; i < expected + 1; i++) coordinator.enqueue({ job_id: `job_${i}`, prompt: `Job number ${i} says`, parameters: params });
    let most = 0;
    await until(() => {
      most = Math.max(most, miner.running);
      return coordinator.frames("result").length === expected + 1;
    }, 60_000);
    expect(most).toBe(expected);
    expect(coordinator.frames("result").every((r) => r.usage.completion_tokens > 0)).toBe(true);
  });

  it("[miner] max_concurrent overrides the hardware's figure in hello", async () => {
    const { coordinator, miner } = await start((raw) => (raw.miner.max_concurrent = 3));
    expect(miner.slots).toBe(3);
    expect(miner.slotsReason).toBe("[miner] max_concurrent = 3");
    expect(await coordinator.waitForType("hello")).toMatchObject({ slots: 3, free_slots: 3 });
  });
});
