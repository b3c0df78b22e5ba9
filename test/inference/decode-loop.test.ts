import path from "node:path";
import * as ort from "onnxruntime-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildFeeds, runDecode, type DecodeModel } from "../../src/inference/decode-loop.js";
import { loadModelInfo } from "../../src/inference/models/model-info.js";
import { MODELS_DIR } from "./engine-fixture.js";

describe("runDecode (in process, tiny-gpt2)", () => {
  let model: DecodeModel;
  beforeAll(async () => {
    const info = loadModelInfo(path.join(MODELS_DIR, "tiny-gpt2"));
    const session = await ort.InferenceSession.create(info.onnxPath, { intraOpNumThreads: 1 });
    model = { name: info.name, session, nLayer: info.nLayer, nHead: info.nHead, headDim: info.headDim, vocabSize: info.vocabSize, eosTokenId: info.eosTokenId };
  });
  afterAll(() => model.session.release());

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

  // A short prompt is prefilled in one run, a long one (over 16 tokens) in two.
  it.each([
    ["short", [15496, 995]],
    ["long", Array.from({ length: 40 }, (_, i) => 100 + i * 37)],
  ])("decoding with the KV cache gives the same ids as re-running the whole sequence each step (%s prompt)", async (_name, promptIds) => {
    const cached = await runDecode(model, { ...req, promptIds, maxTokens: 6 }, { cancelled: () => false, onToken: () => undefined });
    // No cache: every step feeds the whole sequence with an empty past.
    const ids = [...promptIds];
    const names = new Set(model.session.inputNames);
    for (let i = 0; i < 6; i++) {
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
