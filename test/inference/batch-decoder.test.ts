import * as ort from "onnxruntime-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BatchDecoder, buildFeeds, runDecode, type DecodeModel, type DecodeRequest, type DecodeResult } from "../../src/inference/batch-decoder.js";
import { CACHE_GROWTH } from "../../src/inference/kv-cache.js";
import type { GraphLayout } from "../../src/inference/models/gpt2-graph.js";
import { loadModelInfo, type ModelInfo } from "../../src/inference/models/model-info.js";
import { buildTinyModel } from "../models/tiny-model.js";

/** The session, with `onRun` called on every session.run. */
function countingRuns(session: ort.InferenceSession, onRun: () => void): ort.InferenceSession {
  return new Proxy(session, {
    get(target, prop) {
      if (prop === "run") {
        return (...args: Parameters<ort.InferenceSession["run"]>) => {
          onRun();
          return target.run(...args);
        };
      }
      const value = Reflect.get(target, prop, target) as unknown;
      return typeof value === "function" ? (value as (...a: unknown[]) => unknown).bind(target) : value;
    },
  });
}

/** A DecodeModel over a session of the model folder `info` describes. */
function decodeModel(info: ModelInfo, session: ort.InferenceSession): DecodeModel {
  const { name, nLayer, nHead, headDim, vocabSize, eosTokenId, lastLogitsOnly, newKeyValues } = info;
  return { name, session, nLayer, nHead, headDim, vocabSize, eosTokenId, lastLogitsOnly, newKeyValues };
}

/**
 * tiny-gpt2 in a layout, in process, its session.run calls counted: "aitbc" (what we build:
 * last-position logits, new_key_values, so the decoder keeps the cache) or "optimum" (real
 * exports' layout: every position's logits, present only).
 */
function tinyModelFor(layout: GraphLayout): { model: () => DecodeModel; runs: { count: number } } {
  let model: DecodeModel | undefined;
  let cleanup = (): void => undefined;
  const runs = { count: 0 };
  beforeAll(async () => {
    const built = await buildTinyModel({ layout });
    cleanup = built.cleanup;
    const info = loadModelInfo(built.modelDir);
    expect(info).toMatchObject({ lastLogitsOnly: layout === "aitbc", newKeyValues: layout === "aitbc" });
    const session = await ort.InferenceSession.create(info.onnxPath, { intraOpNumThreads: 1 });
    model = decodeModel(info, countingRuns(session, () => runs.count++));
  });
  afterAll(async () => {
    await model?.session.release();
    cleanup();
  });
  return { model: () => model as DecodeModel, runs };
}

describe.each(["aitbc", "optimum"] as const)("runDecode (in process, tiny-gpt2 in the %s layout)", (layout) => {
  const fixture = tinyModelFor(layout);
  let model: DecodeModel;
  beforeAll(() => (model = fixture.model()));

  const req = { promptIds: [15496, 995], maxTokens: 50, seed: 1, temperature: 0, top_k: 0, top_p: 1, repetition_penalty: 1 };

  it("stops before the next step once cancelled: exactly the tokens made so far", async () => {
    let stopAfter = 5;
    const seen: number[] = [];
    const r = await runDecode(model, req, { cancelled: () => seen.length >= stopAfter, onToken: (id) => seen.push(id) });
    expect(r.finishReason).toBe("cancelled");
    expect(r.tokenIds).toHaveLength(5);
    expect(r.tokenIds).toEqual(seen);
    stopAfter = 0;
    seen.length = 0;
    expect((await runDecode(model, req, { cancelled: () => true, onToken: () => undefined })).tokenIds).toEqual([]);
  });

  // A short prompt is prefilled in one run; a long one (over 16 tokens) too when the graph
  // computes the last position's logits only, else in two (see BatchDecoder.prefill). A long
  // generation takes a kept cache past its growth steps (every CACHE_GROWTH tokens).
  it.each([
    ["a short prompt", [15496, 995], 6, 1, 1],
    ["a long prompt", Array.from({ length: 40 }, (_, i) => 100 + i * 37), 6, 1, 2],
    ["a long generation", [464, 2068], 2 * CACHE_GROWTH + 20, 1, 1],
  ])("decoding with the KV cache gives the same ids as re-running the whole sequence each step (%s)", async (_name, promptIds, maxTokens, aitbcPrefillRuns, optimumPrefillRuns) => {
    fixture.runs.count = 0;
    const cached = await runDecode(model, { ...req, promptIds, maxTokens }, { cancelled: () => false, onToken: () => undefined });
    expect(cached.finishReason).toBe("length");
    // The prefill gives the first token; each of the others is one step.
    expect(fixture.runs.count).toBe((layout === "aitbc" ? aitbcPrefillRuns : optimumPrefillRuns) + maxTokens - 1);
    // No cache: every step feeds the whole sequence with an empty past.
    const ids = [...promptIds];
    const names = new Set(model.session.inputNames);
    for (let i = 0; i < maxTokens; i++) {
      const past: Record<string, ort.Tensor> = {};
      for (let l = 0; l < model.nLayer; l++) {
        for (const p of ["key", "value"]) past[`past_key_values.${l}.${p}`] = new ort.Tensor("float32", new Float32Array(0), [1, model.nHead, 0, model.headDim]);
      }
      const out = await model.session.run(buildFeeds(names, ids, 0, past));
      const logits = out.logits!.data as Float32Array;
      const last = logits.subarray(logits.length - model.vocabSize);
      let best = 0;
      for (let v = 1; v < last.length; v++) if (last[v]! > last[best]!) best = v;
      ids.push(best);
    }
    expect(cached.tokenIds).toEqual(ids.slice(promptIds.length));
  });
});

describe.each(["aitbc", "optimum"] as const)("BatchDecoder: sequences sharing decode steps (in process, tiny-gpt2 in the %s layout)", (layout) => {
  // Counts session.run calls, to see that rows really share them.
  const fixture = tinyModelFor(layout);
  let model: DecodeModel;
  beforeAll(() => (model = fixture.model()));

  const greedy = { temperature: 0, top_k: 0, top_p: 1, repetition_penalty: 1 };
  const longPrompt = Array.from({ length: 40 }, (_, i) => 100 + i * 37);
  // Short and long prompts (a long one is prefilled in two runs), greedy and seeded sampling, different lengths.
  const requests: DecodeRequest[] = [
    { promptIds: [15496, 995], maxTokens: 5, seed: 1, ...greedy },
    { promptIds: longPrompt, maxTokens: 12, seed: 2, ...greedy },
    { promptIds: [464, 2068, 7586], maxTokens: 20, seed: 3, temperature: 0.8, top_k: 40, top_p: 0.95, repetition_penalty: 1.2 },
    { promptIds: [50256], maxTokens: 8, seed: 4, temperature: 1.1, top_k: 0, top_p: 1, repetition_penalty: 1 },
  ];
  const never = { cancelled: (): boolean => false, onToken: (): void => undefined };

  async function alone(req: DecodeRequest, on: DecodeModel = model): Promise<DecodeResult> {
    return runDecode(on, req, never);
  }

  async function drain(decoder: BatchDecoder, between?: (step: number) => void): Promise<void> {
    for (let step = 0; decoder.size > 0; step++) {
      between?.(step);
      await decoder.step();
    }
  }

  it("gives every sequence the ids it gets alone, in fewer runs than one at a time", async () => {
    fixture.runs.count = 0;
    const solo: DecodeResult[] = [];
    for (const r of requests) solo.push(await alone(r));
    const soloRuns = fixture.runs.count;

    fixture.runs.count = 0;
    const decoder = new BatchDecoder(model, 8);
    const tokens: number[][] = requests.map(() => []);
    const results = requests.map((r, i) => decoder.add(r, { cancelled: () => false, onToken: (id, count) => tokens[i]!.push(count === tokens[i]!.length + 1 ? id : -1) }));
    let widest = 0;
    await drain(decoder, () => (widest = Math.max(widest, decoder.active)));
    const batched = await Promise.all(results);

    batched.forEach((b, i) => {
      expect(b.tokenIds).toEqual(solo[i]!.tokenIds);
      expect(b.finishReason).toBe("length");
      expect(b.tokenIds).toHaveLength(requests[i]!.maxTokens);
      // One event per token, in order, counts 1, 2, 3, …
      expect(tokens[i]).toEqual(b.tokenIds);
    });
    expect(widest).toBe(4);
    // Alone: 45 decode runs plus the prefills; together the rows share each step (at most 20 + prefills).
    expect(fixture.runs.count).toBeLessThan(soloRuns / 1.5);
  });

  it("takes a sequence that joins mid-flight, and one that waits for room, without changing any output", async () => {
    const solo = await Promise.all(requests.map((r) => alone(r)));
    const decoder = new BatchDecoder(model, 2);
    const results: Promise<DecodeResult>[] = [decoder.add(requests[2]!, never), decoder.add(requests[1]!, never)];
    let widest = 0;
    await drain(decoder, (step) => {
      widest = Math.max(widest, decoder.active);
      // Two more arrive while the first two run; with room for two, they wait for the first to leave.
      if (step === 3) results.push(decoder.add(requests[0]!, never), decoder.add(requests[3]!, never));
    });
    const order = [2, 1, 0, 3];
    (await Promise.all(results)).forEach((r, i) => expect(r.tokenIds).toEqual(solo[order[i]!]!.tokenIds));
    expect(widest).toBe(2);
  });

  it("a cancelled row leaves within one step with its tokens; the others go on unchanged", async () => {
    const solo = await Promise.all(requests.map((r) => alone(r)));
    const decoder = new BatchDecoder(model, 8);
    let made = 0;
    const cancelled = decoder.add(requests[2]!, { cancelled: () => made >= 4, onToken: (_id, count) => (made = count) });
    const others = [0, 1, 3].map((i) => decoder.add(requests[i]!, never));
    await drain(decoder);
    const c = await cancelled;
    expect(c.finishReason).toBe("cancelled");
    expect(c.tokenIds).toEqual(solo[2]!.tokenIds.slice(0, 4));
    (await Promise.all(others)).forEach((r, j) => expect(r.tokenIds).toEqual(solo[[0, 1, 3][j]!]!.tokenIds));
  });

  it("keeps every output while rows join, leave and the cache grows under them", async () => {
    // Long enough that a kept cache grows (every CACHE_GROWTH tokens) several times, at joins, leaves and in between.
    const long: DecodeRequest[] = [
      { promptIds: [15496, 995], maxTokens: 2 * CACHE_GROWTH + 22, seed: 5, ...greedy },
      { promptIds: longPrompt, maxTokens: CACHE_GROWTH + 36, seed: 6, temperature: 0.9, top_k: 50, top_p: 0.9, repetition_penalty: 1.1 },
      { promptIds: [464, 2068, 7586], maxTokens: CACHE_GROWTH + 6, seed: 7, ...greedy },
      { promptIds: [50256], maxTokens: CACHE_GROWTH + 26, seed: 8, temperature: 1, top_k: 0, top_p: 1, repetition_penalty: 1 },
    ];
    const solo = await Promise.all(long.map((r) => alone(r)));
    const decoder = new BatchDecoder(model, 8);
    let made = 0;
    const results: Promise<DecodeResult>[] = [decoder.add(long[0]!, never), decoder.add(long[1]!, never)];
    const cancelled = decoder.add(long[3]!, { cancelled: () => made >= CACHE_GROWTH - 4, onToken: (_id, count) => (made = count) });
    await drain(decoder, (step) => {
      if (step === 40) results.push(decoder.add(long[2]!, never));
    });
    (await Promise.all(results)).forEach((r, i) => expect(r.tokenIds).toEqual(solo[[0, 1, 2][i]!]!.tokenIds));
    expect((await cancelled).tokenIds).toEqual(solo[3]!.tokenIds.slice(0, CACHE_GROWTH - 4));
  });

  it("runs a graph without position_ids one sequence at a time (it would number padded rows wrong)", () => {
    expect(new BatchDecoder(model, 8).maxBatch).toBe(8);
    const names = model.session.inputNames.filter((n) => n !== "position_ids");
    const session = new Proxy(model.session, { get: (t, p) => (p === "inputNames" ? names : (Reflect.get(t, p, t) as unknown)) });
    expect(new BatchDecoder({ ...model, session }, 8).maxBatch).toBe(1);
  });

  it("ends a row at its end-of-text token while the rest continue", async () => {
    const plain = await alone(requests[1]!);
    // Pretend the third token of this greedy sequence is end-of-text.
    const eos = plain.tokenIds[2]!;
    const withEos = { ...model, eosTokenId: eos };
    const solo = await Promise.all(requests.map((r) => alone(r, withEos)));
    const decoder = new BatchDecoder(withEos, 8);
    const results = requests.map((r) => decoder.add(r, never));
    await drain(decoder);
    const batched = await Promise.all(results);
    expect(batched[1]).toMatchObject({ finishReason: "eos", tokenIds: plain.tokenIds.slice(0, 3) });
    batched.forEach((b, i) => expect(b).toMatchObject({ tokenIds: solo[i]!.tokenIds, finishReason: solo[i]!.finishReason }));
  });
});

describe("buildFeeds", () => {
  const past = { "past_key_values.0.key": new ort.Tensor("float32", new Float32Array(0), [1, 2, 0, 4]) };

  it("feeds only the inputs the graph declares", () => {
    const minimal = buildFeeds(new Set(["input_ids", "attention_mask", "past_key_values.0.key"]), [7, 8], 0, past);
    expect(Object.keys(minimal).sort()).toEqual(["attention_mask", "input_ids", "past_key_values.0.key"]);
    const full = buildFeeds(new Set(["input_ids", "attention_mask", "position_ids", "use_cache_branch", "past_key_values.0.key"]), [9], 3, past);
    expect(Object.keys(full).sort()).toEqual(["attention_mask", "input_ids", "past_key_values.0.key", "position_ids", "use_cache_branch"]);
  });

  it("positions continue after the past, the mask covers past and new tokens, use_cache_branch says whether there is a past", () => {
    const names = new Set(["input_ids", "attention_mask", "position_ids", "use_cache_branch"]);
    const prefill = buildFeeds(names, [7, 8], 0, {});
    expect([...(prefill.position_ids!.data as BigInt64Array)]).toEqual([0n, 1n]);
    expect(prefill.attention_mask!.dims).toEqual([1, 2]);
    expect([...(prefill.use_cache_branch!.data as Uint8Array)]).toEqual([0]);
    const step = buildFeeds(names, [9], 5, {});
    expect([...(step.position_ids!.data as BigInt64Array)]).toEqual([5n]);
    expect(step.attention_mask!.dims).toEqual([1, 6]);
    expect([...(step.use_cache_branch!.data as Uint8Array)]).toEqual([1]);
  });
});
