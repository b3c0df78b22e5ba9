import { createHash } from "node:crypto";
import { Value } from "@sinclair/typebox/value";
import { afterEach, describe, expect, it } from "vitest";
import { Backoff } from "../../src/common/backoff.js";
import { silentLogger } from "../../src/common/logger.js";
import { compileMinerConfig, MinerConfigSchema, type MinerConfigRaw } from "../../src/miner/config.js";
import { FakeEngine } from "../../src/miner/fake-engine.js";
import { Miner, type MinerState } from "../../src/miner/miner.js";
import type { GpuInfo } from "../../src/protocol/frames.js";
import { PROTOCOL_VERSION } from "../../src/protocol/version.js";
import { FakeCoordinator } from "./fake-coordinator.js";
import { GpuLoadSampler } from "../../src/miner/gpu/gpu-load.js";
import { readFileSync } from "node:fs";
import path from "node:path";

const GPU: GpuInfo = { index: 0, name: "NVIDIA GeForce RTX 4090", vram_total_mb: 24564, vram_free_mb: 23988 };

interface Setup {
  coordinator: FakeCoordinator;
  miner: Miner;
  states: MinerState[];
}

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function setup(
  options: {
    raw?: (raw: MinerConfigRaw) => void;
    key?: string;
    tokensPerSecond?: number;
    hangAfterTokens?: number;
    gpus?: GpuInfo[];
    gpuLoad?: GpuLoadSampler;
  } = {},
): Promise<Setup> {
  const coordinator = await FakeCoordinator.start();
  const raw = Value.Default(MinerConfigSchema, {}) as MinerConfigRaw;
  raw.coordinator.url = coordinator.url;
  raw.coordinator.key = options.key ?? coordinator.key;
  raw.miner.name = "test-rig";
  raw.miner.max_concurrent_per_gpu = 2;
  raw.miner.progress_interval = "0ms";
  raw.miner.drain_grace = "5s";
  raw.fake_engine.enabled = true;
  raw.fake_engine.tokens_per_second = options.tokensPerSecond ?? 400;
  raw.fake_engine.hang_after_tokens = options.hangAfterTokens ?? 0;
  options.raw?.(raw);
  const config = compileMinerConfig(raw, undefined);
  const miner = new Miner({
    config,
    engine: new FakeEngine(config.fakeEngine!),
    gpus: options.gpus ?? [GPU],
    log: silentLogger(),
    version: "9.9.9",
    backoff: new Backoff({ baseMs: 20, maxMs: 100 }),
    ...(options.gpuLoad === undefined ? {} : { gpuLoad: options.gpuLoad }),
  });
  const states: MinerState[] = [];
  miner.on("state", ({ to }) => states.push(to));
  cleanups.push(async () => {
    await miner.stop({ graceMs: 0 });
    await coordinator.close();
  });
  await miner.start();
  return { coordinator, miner, states };
}

async function until(cond: () => boolean, timeoutMs = 10_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error("condition not met in time");
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe("Miner against a fake coordinator", () => {
  it("says hello with its GPUs, models and slots, then pulls its free slots", async () => {
    const { coordinator, miner, states } = await setup();
    const hello = await coordinator.waitForType("hello");
    expect(hello).toEqual({
      type: "hello",
      protocol_version: PROTOCOL_VERSION,
      instance_id: miner.instanceId,
      miner_name: "test-rig",
      version: "9.9.9",
      gpus: [GPU],
      models: ["tiny-gpt2"],
      slots: 2,
      free_slots: 2,
      in_flight: [],
    });
    const pull = await coordinator.waitForType("pull");
    expect(pull.free_slots).toBe(2);
    expect(miner.state).toBe("ready");
    expect(states).toEqual(["connecting", "ready"]);
  });

  it("does not get in with a wrong key and keeps retrying with backoff", async () => {
    const { coordinator, miner } = await setup({ key: "wrong" });
    await until(() => coordinator.authFailures.length >= 3);
    expect(coordinator.connections).toBe(0);
    expect(miner.state).toBe("connecting");
  });

  it("runs an assigned job: started, progress, result with the output's sha256, ack, pull again", async () => {
    const { coordinator, miner } = await setup();
    await coordinator.waitForType("pull");
    const assign = coordinator.enqueue({ job_id: "job_run", parameters: { max_new_tokens: 12, temperature: 0, top_k: 0, top_p: 1, repetition_penalty: 1, stop: [], seed: 3 } });
    const started = await coordinator.waitForType("started");
    expect(started).toEqual({ type: "started", job_id: "job_run", attempt: 1, lease_token: assign.lease_token });
    const result = await coordinator.waitForType("result");
    const progress = coordinator.frames("progress");
    expect(progress.length).toBeGreaterThan(0);
    for (const p of progress) {
      expect(p.lease_token).toBe(assign.lease_token);
      expect(p.max_tokens).toBe(12);
      expect(p.tokens).toBeLessThanOrEqual(12);
    }
    expect(progress.map((p) => p.tokens)).toEqual([...progress.map((p) => p.tokens)].sort((a, b) => a - b));
    expect(result.finish_reason).toBe("length");
    expect(result.usage.completion_tokens).toBe(12);
    expect(result.output).toBeDefined();
    expect(result.sha256).toBe(createHash("sha256").update(result.output!).digest("hex"));
    expect(result.output_bytes).toBe(Buffer.byteLength(result.output!));
    // After the ack the job is forgotten and the freed slot is pulled again.
    await until(() => miner.inFlight().length === 0);
    await until(() => coordinator.frames("pull").length >= 2);
    expect(coordinator.frames("pull").at(-1)!.free_slots).toBe(2);
  });

  it("with a protocol 4 welcome streams the text in text frames that add up to the result; a protocol 3 welcome gets progress only", async () => {
    const { coordinator } = await setup();
    await coordinator.waitForType("pull");
    // The welcome above had no protocol_version (a protocol 3 coordinator): progress frames only.
    coordinator.enqueue({ job_id: "job_v3", parameters: { max_new_tokens: 12, temperature: 0, top_k: 0, top_p: 1, repetition_penalty: 1, stop: [], seed: 3 } });
    await coordinator.waitFor((r) => r.frame.type === "result" && r.frame.job_id === "job_v3");
    expect(coordinator.frames("text")).toHaveLength(0);
    expect(coordinator.frames("progress").length).toBeGreaterThan(0);
    // Reconnected to a protocol 4 coordinator: text frames instead of progress.
    coordinator.protocolVersion = 4;
    coordinator.drop();
    await coordinator.waitFor((r) => r.frame.type === "hello" && coordinator.frames("hello").length >= 2);
    const progressBefore = coordinator.frames("progress").length;
    coordinator.enqueue({ job_id: "job_v4", parameters: { max_new_tokens: 40, temperature: 0, top_k: 0, top_p: 1, repetition_penalty: 1, stop: [], seed: 3 } });
    const result = await coordinator.waitFor((r) => r.frame.type === "result" && r.frame.job_id === "job_v4");
    const texts = coordinator.frames("text").filter((f) => f.job_id === "job_v4");
    expect(texts.length).toBeGreaterThan(0);
    expect(coordinator.frames("progress").length).toBe(progressBefore);
    const streamed = texts.reduce((t, f) => t.slice(0, f.index) + f.delta, "");
    expect(result.frame.type === "result" ? result.frame.output : undefined).toBe(streamed);
    expect(texts.at(-1)!.tokens).toBe(40);
  });

  it("heartbeats carry the GPUs' load from nvidia-smi only to a protocol 5 coordinator", async () => {
    const smi = readFileSync(path.join(import.meta.dirname, "..", "fixtures", "nvidia-smi", "2x-a100-80gb.txt"), "utf8");
    const runs: string[][] = [];
    const gpuLoad = new GpuLoadSampler({
      command: "nvidia-smi",
      runner: (_cmd, args) => {
        runs.push(args);
        return Promise.resolve({ code: 0, stdout: smi, stderr: "" });
      },
      indices: [1],
      log: silentLogger(),
    });
    const { coordinator } = await setup({ gpuLoad });
    await coordinator.waitForType("pull");
    coordinator.protocolVersion = 4;
    coordinator.drop();
    await until(() => coordinator.frames("hello").length >= 2);
    const before = coordinator.frames("heartbeat").length;
    await until(() => coordinator.frames("heartbeat").length >= before + 2);
    expect(coordinator.frames("heartbeat").slice(before).every((h) => h.gpus === undefined)).toBe(true);
    coordinator.protocolVersion = 5;
    coordinator.drop();
    await until(() => coordinator.frames("hello").length >= 3);
    await until(() => coordinator.frames("heartbeat").some((h) => h.gpus !== undefined));
    // Only the GPUs it uses (index 1 here), as the fixture reads.
    expect(coordinator.frames("heartbeat").find((h) => h.gpus !== undefined)!.gpus).toEqual([{ index: 1, utilization_percent: 87, vram_free_mb: 41210 }]);
    expect(runs[0]).toContain("--format=csv,noheader,nounits");
  });

  it("gives the same output for the same seed on a second attempt", async () => {
    const { coordinator } = await setup();
    await coordinator.waitForType("pull");
    coordinator.enqueue({ job_id: "job_seed" }, 1);
    coordinator.enqueue({ job_id: "job_seed" }, 2);
    const a = await coordinator.waitForType("result", (r) => r.attempt === 1);
    const b = await coordinator.waitForType("result", (r) => r.attempt === 2);
    expect(b.sha256).toBe(a.sha256);
  });

  it("obeys cancel: stops the running job and reports fail{cancelled}", async () => {
    const { coordinator, miner } = await setup({ tokensPerSecond: 50 });
    await coordinator.waitForType("pull");
    coordinator.enqueue({ job_id: "job_cancel", parameters: { max_new_tokens: 4096, temperature: 0, top_k: 0, top_p: 1, repetition_penalty: 1, stop: [], seed: 1 } });
    await coordinator.waitForType("progress");
    coordinator.send({ type: "cancel", job_id: "job_cancel", attempt: 1, reason: "cancelled" });
    const fail = await coordinator.waitForType("fail");
    expect(fail).toMatchObject({ job_id: "job_cancel", attempt: 1, code: "cancelled", retryable: false });
    expect(coordinator.frames("result")).toEqual([]);
    expect(Math.max(...coordinator.frames("progress").map((p) => p.tokens))).toBeLessThan(4096);
    await until(() => miner.running === 0);
  });

  it("enforces timeout_seconds with fail{timed_out}", async () => {
    const { coordinator, miner } = await setup({ hangAfterTokens: 2 });
    await coordinator.waitForType("pull");
    coordinator.enqueue({ job_id: "job_slow", timeout_seconds: 1 });
    const fail = await coordinator.waitForType("fail");
    expect(fail).toMatchObject({ job_id: "job_slow", code: "timed_out", retryable: false });
    await until(() => miner.running === 0);
  });

  it("fails an assignment for a model it does not serve, retryable elsewhere", async () => {
    const { coordinator } = await setup();
    await coordinator.waitForType("pull");
    coordinator.enqueue({ job_id: "job_model", model: "gpt2-xl" });
    const fail = await coordinator.waitForType("fail");
    expect(fail).toMatchObject({ job_id: "job_model", code: "model_unavailable", retryable: true });
  });

  it("reconnects after a dropped connection and resumes the running job with its lease", async () => {
    const { coordinator, miner, states } = await setup({ tokensPerSecond: 40 });
    await coordinator.waitForType("pull");
    const assign = coordinator.enqueue({ job_id: "job_resume", parameters: { max_new_tokens: 60, temperature: 0, top_k: 0, top_p: 1, repetition_penalty: 1, stop: [], seed: 1 } });
    await coordinator.waitForType("progress");
    coordinator.drop();
    const hello2 = await coordinator.waitFor((r) => r.conn === 2 && r.frame.type === "hello");
    expect(hello2.frame.type === "hello" && hello2.frame.in_flight).toEqual([
      { job_id: "job_resume", attempt: 1, lease_token: assign.lease_token, state: "running" },
    ]);
    const result = await coordinator.waitFor((r) => r.frame.type === "result");
    expect(result.conn).toBe(2);
    expect(result.frame.type === "result" && result.frame.lease_token).toBe(assign.lease_token);
    expect(states).toContain("connecting");
    expect(miner.state).toBe("ready");
  });

  it("keeps a result finished while disconnected and resends it after the reconnect", async () => {
    const { coordinator, miner } = await setup({ tokensPerSecond: 40 });
    await coordinator.waitForType("pull");
    coordinator.enqueue({ job_id: "job_offline", parameters: { max_new_tokens: 10, temperature: 0, top_k: 0, top_p: 1, repetition_penalty: 1, stop: [], seed: 1 } });
    await coordinator.waitForType("progress");
    coordinator.accepting = false;
    coordinator.drop();
    await until(() => miner.inFlight()[0]?.state === "finished");
    expect(coordinator.frames("result")).toEqual([]);
    coordinator.accepting = true;
    const hello2 = await coordinator.waitFor((r) => r.conn === 2 && r.frame.type === "hello");
    expect(hello2.frame.type === "hello" && hello2.frame.in_flight.map((f) => f.state)).toEqual(["finished"]);
    const result = await coordinator.waitForType("result");
    expect(result.job_id).toBe("job_offline");
    await until(() => miner.inFlight().length === 0);
  });

  it("drops a job whose lease the coordinator refuses after a reconnect", async () => {
    const { coordinator, miner } = await setup({ tokensPerSecond: 40 });
    await coordinator.waitForType("pull");
    coordinator.enqueue({ job_id: "job_lost", parameters: { max_new_tokens: 200, temperature: 0, top_k: 0, top_p: 1, repetition_penalty: 1, stop: [], seed: 1 } });
    await coordinator.waitForType("progress");
    coordinator.refuse = (hello) => hello.in_flight.map((f) => ({ job_id: f.job_id, attempt: f.attempt, reason: "lease_expired" }));
    coordinator.drop();
    await coordinator.waitFor((r) => r.conn === 2 && r.frame.type === "hello");
    await until(() => miner.inFlight().length === 0);
    expect(coordinator.frames("result")).toEqual([]);
    expect(coordinator.frames("fail")).toEqual([]);
  });

  it("answers invalid frames with error frames and drops the connection on repeat", async () => {
    const { coordinator } = await setup();
    await coordinator.waitForType("pull");
    coordinator.sendRaw("not json");
    const first = await coordinator.waitForType("error");
    expect(first).toMatchObject({ code: "frame_not_json", fatal: false });
    coordinator.send({ type: "assign", job: {} });
    coordinator.send({ type: "teleport" });
    await coordinator.waitForType("error", (e) => e.fatal);
    const errors = coordinator.frames("error").map((e) => e.code);
    expect(errors).toEqual(["frame_not_json", "frame_invalid", "frame_unknown_type"]);
    await coordinator.waitFor((r) => r.conn === 2 && r.frame.type === "hello");
  });

  it("stops pulling after a drain frame until the next welcome", async () => {
    const { coordinator } = await setup();
    await coordinator.waitForType("pull");
    coordinator.send({ type: "drain", reason: "coordinator_shutdown" });
    coordinator.enqueue({ job_id: "job_after_drain" });
    // A stray assign during a drain is handed back, not run.
    coordinator.send({ ...coordinator.enqueue({ job_id: "job_stray" }), type: "assign" });
    const released = await coordinator.waitForType("released");
    expect(released.reason).toBe("coordinator_drain");
    expect(coordinator.frames("started")).toEqual([]);
  });
});

describe("Miner with a dead engine", () => {
  it("reports the failed job as retryable, hands back the rest and stops itself", async () => {
    const { coordinator, miner, states } = await setup({
      tokensPerSecond: 100,
      raw: (raw) => {
        raw.fake_engine.crash_after_tokens = 3;
      },
    });
    const fatal = new Promise<{ code: string }>((resolve) => miner.once("fatal", resolve));
    await coordinator.waitForType("pull");
    coordinator.enqueue({ job_id: "job_crash" });
    const fail = await coordinator.waitForType("fail");
    expect(fail).toMatchObject({ job_id: "job_crash", code: "engine_worker_failed", retryable: true });
    expect(await fatal).toEqual({ code: "engine_worker_failed" });
    await until(() => miner.state === "stopped");
    expect(miner.fatalError).toBe("engine_worker_failed");
    expect(states.slice(-2)).toEqual(["draining", "stopped"]);
    expect(coordinator.frames("started")).toHaveLength(1);
  });
});

describe("Miner.stop", () => {
  it("lets a running job finish within the grace period, then stops", async () => {
    const { coordinator, miner, states } = await setup({ tokensPerSecond: 100 });
    await coordinator.waitForType("pull");
    coordinator.enqueue({ job_id: "job_finish", parameters: { max_new_tokens: 20, temperature: 0, top_k: 0, top_p: 1, repetition_penalty: 1, stop: [], seed: 1 } });
    await coordinator.waitForType("started");
    await miner.stop({ graceMs: 10_000 });
    expect(coordinator.frames("result").map((r) => r.job_id)).toEqual(["job_finish"]);
    expect(coordinator.frames("released")).toEqual([]);
    expect(coordinator.frames("pull").at(-1)!.free_slots).toBe(0);
    expect(states).toEqual(["connecting", "ready", "draining", "stopped"]);
  });

  it("hands back what is still running when the grace period is over", async () => {
    const { coordinator, miner, states } = await setup({ tokensPerSecond: 20 });
    await coordinator.waitForType("pull");
    const a = coordinator.enqueue({ job_id: "job_long", parameters: { max_new_tokens: 4096, temperature: 0, top_k: 0, top_p: 1, repetition_penalty: 1, stop: [], seed: 1 } });
    await coordinator.waitForType("progress");
    const first = miner.stop({ graceMs: 100 });
    expect(miner.stop()).toBe(first);
    await first;
    const released = coordinator.frames("released");
    expect(released).toEqual([{ type: "released", job_id: "job_long", attempt: 1, lease_token: a.lease_token, reason: "shutdown" }]);
    expect(coordinator.frames("result")).toEqual([]);
    expect(states.at(-1)).toBe("stopped");
    expect(miner.inFlight()).toEqual([]);
  });
});
