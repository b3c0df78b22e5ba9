import { execFile } from "node:child_process";
import { cpSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { AppError } from "../../src/common/errors.js";
import type { GenerateResult, TokenEvent } from "../../src/inference/engine.js";
import { buildModel } from "../../src/inference/models/build-model.js";
import { RECIPES } from "../../src/inference/models/recipes.js";
import { OnnxEngine } from "../../src/inference/onnx-engine.js";
import { generateStream } from "../../src/inference/token-stream.js";
import { MODELS_DIR, NO_SUCH_DEVICE, capturingLogger, engineConfig, expectCudaFailureReason, greedy } from "./engine-fixture.js";

const run = promisify(execFile);

describe("OnnxEngine on tiny-gpt2 (CPU)", () => {
  let engine: OnnxEngine;
  beforeAll(async () => {
    engine = new OnnxEngine(engineConfig(), { log: capturingLogger().log });
    await engine.initialize();
  });
  afterAll(() => engine.close());

  it("lists the loaded model and where it runs", () => {
    expect(engine.models()).toEqual([{ name: "tiny-gpt2", device: "cpu", n_positions: 1024 }]);
  });

  it("greedy output equals transformers.js's text-generation pipeline token for token", async () => {
    const cases = [
      { prompt: "Hello world", max_new_tokens: 1 },
      { prompt: "The quick brown fox", max_new_tokens: 8 },
      { prompt: "In 1999, the committee said", max_new_tokens: 24 },
      { prompt: "Café, naïve — 日本語!", max_new_tokens: 40 },
      // Over 16 tokens: prefilled in two runs where the graph has every position's logits (batch-decoder.test.ts runs both layouts).
      { prompt: "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of foolishness", max_new_tokens: 16 },
      // Past two growth steps of the cache the engine keeps for our graphs (CACHE_GROWTH = 64).
      { prompt: "Once upon a time", max_new_tokens: 150 },
    ];
    const script = path.resolve(import.meta.dirname, "xenova-generate.mjs");
    const child = run(process.execPath, [script, JSON.stringify({ modelsDir: MODELS_DIR, model: "tiny-gpt2", cases })], { maxBuffer: 16 << 20 });
    const ours: GenerateResult[] = [];
    for (const c of cases) ours.push(await engine.generate({ model: "tiny-gpt2", prompt: c.prompt, params: greedy(c.max_new_tokens) }));
    const theirs = (JSON.parse((await child).stdout) as { results: { text: string; ids: number[] }[] }).results;
    cases.forEach((c, i) => {
      expect(ours[i]!.token_ids).toEqual(theirs[i]!.ids);
      expect(ours[i]!.token_ids).toHaveLength(c.max_new_tokens);
      expect(c.prompt + ours[i]!.text).toBe(theirs[i]!.text);
      expect(ours[i]!.finish_reason).toBe("length");
    });
  });

  it("streams one event per token whose deltas add up to the text, with usage and timing", async () => {
    const events: TokenEvent[] = [];
    const r = await engine.generate({ model: "tiny-gpt2", prompt: "Once upon a time", params: greedy(12), onToken: (e) => events.push(e) });
    expect(events.map((e) => e.tokens)).toEqual(Array.from({ length: 12 }, (_, i) => i + 1));
    expect(events.every((e) => e.maxTokens === 12)).toBe(true);
    expect(events.map((e) => e.delta).join("")).toBe(r.text);
    expect(r.usage).toEqual({ prompt_tokens: 4, completion_tokens: 12 });
    expect(r.timing.time_to_first_token_ms).toBeGreaterThan(0);
    expect(r.timing.tokens_per_second).toBeGreaterThan(0);
    expect(r.timing.total_ms).toBeGreaterThanOrEqual(r.timing.time_to_first_token_ms);
  });

  it("streams the same events as an async iterator", async () => {
    const stream = generateStream(engine, { model: "tiny-gpt2", prompt: "Once upon a time", params: greedy(6) });
    const events: TokenEvent[] = [];
    for await (const e of stream) events.push(e);
    const r = await stream.result;
    expect(events.map((e) => e.tokens)).toEqual([1, 2, 3, 4, 5, 6]);
    expect(events.map((e) => e.delta).join("")).toBe(r.text);
  });

  it("seeded sampling is reproducible and depends on the seed", async () => {
    const params = { max_new_tokens: 20, temperature: 1, top_k: 50, top_p: 0.95, repetition_penalty: 1.1, stop: [], seed: 42 };
    const a = await engine.generate({ model: "tiny-gpt2", prompt: "Seeds", params });
    const b = await engine.generate({ model: "tiny-gpt2", prompt: "Seeds", params });
    const c = await engine.generate({ model: "tiny-gpt2", prompt: "Seeds", params: { ...params, seed: 43 } });
    expect(b.token_ids).toEqual(a.token_ids);
    expect(b.text).toBe(a.text);
    expect(c.token_ids).not.toEqual(a.token_ids);
  });

  it("a stop sequence cuts the text exactly before its first occurrence", async () => {
    const full = await engine.generate({ model: "tiny-gpt2", prompt: "Hello world", params: greedy(30) });
    // A stop sequence taken from the middle of the greedy output, spanning a token boundary.
    const stop = full.text.slice(7, 13);
    const events: TokenEvent[] = [];
    const r = await engine.generate({ model: "tiny-gpt2", prompt: "Hello world", params: greedy(30, { stop: [stop] }), onToken: (e) => events.push(e) });
    expect(r.finish_reason).toBe("stop");
    expect(r.text).toBe(full.text.slice(0, full.text.indexOf(stop)));
    expect(events.map((e) => e.delta).join("")).toBe(r.text);
    expect(r.usage.completion_tokens).toBeLessThan(30);
  });

  it("cancelling through an AbortSignal ends with 'cancelled' and what was generated", async () => {
    const controller = new AbortController();
    const events: TokenEvent[] = [];
    const r = await engine.generate({
      model: "tiny-gpt2",
      prompt: "A long story",
      params: greedy(1000),
      signal: controller.signal,
      onToken: (e) => {
        events.push(e);
        if (e.tokens === 5) controller.abort();
      },
    });
    expect(r.finish_reason).toBe("cancelled");
    expect(r.usage.completion_tokens).toBeGreaterThanOrEqual(5);
    expect(r.usage.completion_tokens).toBeLessThan(1000 - 4);
    expect(r.token_ids).toHaveLength(events.length);
    expect(r.text.startsWith(events.map((e) => e.delta).join(""))).toBe(true);
  });

  it("an already aborted signal generates nothing", async () => {
    const r = await engine.generate({ model: "tiny-gpt2", prompt: "x", params: greedy(10), signal: AbortSignal.abort() });
    expect(r).toMatchObject({ finish_reason: "cancelled", text: "", token_ids: [] });
  });

  it("keeps the event loop free: timers fire between token events", async () => {
    const order: string[] = [];
    const timer = setInterval(() => order.push("tick"), 1);
    try {
      await engine.generate({ model: "tiny-gpt2", prompt: "Tick tock", params: greedy(300), onToken: () => order.push("token") });
    } finally {
      clearInterval(timer);
    }
    const first = order.indexOf("token");
    const last = order.lastIndexOf("token");
    expect(order.slice(first, last).filter((x) => x === "tick").length).toBeGreaterThan(0);
  });

  it("clamps max_new_tokens to the context and refuses a prompt that does not fit", async () => {
    // Each " a" is one token: 1020 prompt tokens leave room for 4 in a 1024-position model.
    const r = await engine.generate({ model: "tiny-gpt2", prompt: " a".repeat(1020), params: greedy(50) });
    expect(r.usage).toEqual({ prompt_tokens: 1020, completion_tokens: 4 });
    expect(r.finish_reason).toBe("length");
    await expect(engine.generate({ model: "tiny-gpt2", prompt: " a".repeat(1024), params: greedy(5) })).rejects.toMatchObject({ code: "prompt_too_long" });
  });

  it("concurrent generations on one device (sharing its decode steps) each get what they get alone", async () => {
    const jobs = [
      { prompt: "The quick brown fox", params: greedy(10) },
      { prompt: "It was the best of times, it was the worst of times, it was the age of wisdom", params: greedy(6) },
      { prompt: "Once", params: greedy(14, { temperature: 0.9, top_k: 20, seed: 7 }) },
    ];
    const alone: GenerateResult[] = [];
    for (const j of jobs) alone.push(await engine.generate({ model: "tiny-gpt2", ...j }));
    const streamed: string[] = jobs.map(() => "");
    const controller = new AbortController();
    const together = await Promise.all([
      ...jobs.map((j, i) => engine.generate({ model: "tiny-gpt2", ...j, onToken: (e) => (streamed[i] += e.delta) })),
      // A fourth that is aborted after 3 tokens while the others run.
      engine.generate({ model: "tiny-gpt2", prompt: "stop me", params: greedy(40), signal: controller.signal, onToken: (e) => void (e.tokens === 3 && controller.abort()) }),
    ]);
    jobs.forEach((_, i) => {
      expect(together[i]!.token_ids).toEqual(alone[i]!.token_ids);
      expect(together[i]!.text).toBe(alone[i]!.text);
      expect(streamed[i]).toBe(together[i]!.text);
    });
    expect(together[3]!.finish_reason).toBe("cancelled");
    // Aborted in its third token's callback: the worker, a few steps ahead at most, stops it long before 40.
    expect(together[3]!.token_ids.length).toBeGreaterThanOrEqual(3);
    expect(together[3]!.token_ids.length).toBeLessThan(40);
  });

  it("refuses a model it has not loaded", async () => {
    await expect(engine.generate({ model: "nope", prompt: "x", params: greedy(1) })).rejects.toMatchObject({ code: "model_not_loaded" });
  });
});

describe("OnnxEngine sessions and lifecycle", () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(path.join(tmpdir(), "aitbc-engine-"));
    cpSync(path.join(MODELS_DIR, "tiny-gpt2"), path.join(dir, "tiny-gpt2"), { recursive: true });
    cpSync(path.join(MODELS_DIR, "tiny-gpt2"), path.join(dir, "tiny-copy"), { recursive: true });
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("auto falls back to the CPU when CUDA cannot run the device asked for, and logs why", async () => {
    const { log, records } = capturingLogger();
    const engine = new OnnxEngine(engineConfig({ executionProvider: "auto", deviceIds: [NO_SUCH_DEVICE], modelsDir: dir, models: ["tiny-gpt2", "tiny-copy"] }), { log });
    try {
      await engine.initialize();
      expect(engine.models().map((m) => [m.name, m.device])).toEqual([
        ["tiny-gpt2", "cpu"],
        ["tiny-copy", "cpu"],
      ]);
      const fallback = records.filter((r) => r.msg === "CUDA unavailable, running on the CPU");
      expect(fallback).toHaveLength(2);
      expect(fallback[0]).toMatchObject({ device: `cuda:${NO_SUCH_DEVICE}`, model: "tiny-gpt2" });
      expectCudaFailureReason(fallback[0]!.reason);
      // Both models serve, each from its own session.
      const [a, b] = await Promise.all([
        engine.generate({ model: "tiny-gpt2", prompt: "Hi", params: greedy(5) }),
        engine.generate({ model: "tiny-copy", prompt: "Hi", params: greedy(5) }),
      ]);
      expect(b.token_ids).toEqual(a.token_ids);
    } finally {
      await engine.close();
    }
  });

  it("auto on GPU 0 runs on cuda:0 where the provider loads, else on the CPU saying why", async () => {
    const { log, records } = capturingLogger();
    const engine = new OnnxEngine(engineConfig({ executionProvider: "auto", deviceIds: [0], modelsDir: dir }), { log });
    try {
      await engine.initialize();
      const [model] = engine.models();
      const fallback = records.filter((r) => r.msg === "CUDA unavailable, running on the CPU");
      if (model?.device === "cuda:0") expect(fallback).toEqual([]);
      else {
        expect(model?.device).toBe("cpu");
        expect(fallback).toHaveLength(1);
        expectCudaFailureReason(fallback[0]!.reason);
      }
      const r = await engine.generate({ model: "tiny-gpt2", prompt: "Hi", params: greedy(5) });
      expect(r.token_ids).toHaveLength(5);
    } finally {
      await engine.close();
    }
  });

  it("runs an int8-weight model beside its float32 original, streaming and stopping like any other", async () => {
    await buildModel(RECIPES["tiny-gpt2"]!, path.join(dir, "tiny-gpt2-int8"), { weights: "int8" });
    const engine = new OnnxEngine(engineConfig({ modelsDir: dir, models: ["tiny-gpt2", "tiny-gpt2-int8"] }), { log: capturingLogger().log });
    try {
      await engine.initialize();
      const events: TokenEvent[] = [];
      const q = await engine.generate({ model: "tiny-gpt2-int8", prompt: "The quick brown fox", params: greedy(12), onToken: (e) => events.push(e) });
      expect(q.finish_reason).toBe("length");
      expect(q.token_ids).toHaveLength(12);
      expect(events.map((e) => e.delta).join("")).toBe(q.text);
      // Its own deterministic output: the same request gives the same tokens.
      const again = await engine.generate({ model: "tiny-gpt2-int8", prompt: "The quick brown fox", params: greedy(12) });
      expect(again.token_ids).toEqual(q.token_ids);
      // Rounded weights, mostly the same greedy path: the first token (the widest margin) agrees.
      const f = await engine.generate({ model: "tiny-gpt2", prompt: "The quick brown fox", params: greedy(12) });
      expect(q.token_ids[0]).toBe(f.token_ids[0]);
      const stopped = await engine.generate({ model: "tiny-gpt2-int8", prompt: "The quick brown fox", params: greedy(12, { stop: [q.text.slice(3, 6)] }) });
      expect(stopped.finish_reason).toBe("stop");
      expect(stopped.text).toBe(q.text.slice(0, q.text.indexOf(q.text.slice(3, 6))));
    } finally {
      await engine.close();
    }
  });

  it("cuda refuses to start when CUDA cannot run the device asked for", async () => {
    const engine = new OnnxEngine(engineConfig({ executionProvider: "cuda", deviceIds: [NO_SUCH_DEVICE], modelsDir: dir }), { log: capturingLogger().log });
    const err = (await engine.initialize().catch((e: unknown) => e)) as AppError;
    expect(err.code).toBe("cuda_unavailable");
    expect(err.details).toMatchObject({ device_id: NO_SUCH_DEVICE });
    expectCudaFailureReason(err.details?.reason);
    await engine.close();
  });

  it("close releases the workers, is idempotent, and generate fails afterwards", async () => {
    const engine = new OnnxEngine(engineConfig({ modelsDir: dir }), { log: capturingLogger().log });
    await engine.initialize();
    await engine.initialize();
    await engine.close();
    await engine.close();
    await expect(engine.generate({ model: "tiny-gpt2", prompt: "x", params: greedy(1) })).rejects.toMatchObject({ code: "engine_not_ready" });
  });

  it("a missing model fails initialize with the model error", async () => {
    const engine = new OnnxEngine(engineConfig({ modelsDir: dir, models: ["absent"] }), { log: capturingLogger().log });
    await expect(engine.initialize()).rejects.toMatchObject({ code: "model_not_found" });
    await engine.close();
  });
});
