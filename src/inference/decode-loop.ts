import * as ort from "onnxruntime-node";
import { ModelError } from "../common/errors.js";
import type { ResolvedGenerationParameters } from "../protocol/generation.js";
import type { FinishReason } from "./engine.js";
import { IncrementalDecoder } from "./incremental-decoder.js";
import { SeededRandom, sampleNextToken } from "./sampling.js";
import { StopSequenceMatcher } from "./stop-sequences.js";
import type { WorkerGenerationResult } from "./worker-protocol.js";

/** A model ready to generate: its session, tokenizer and the shape the feeds need. */
export interface LoadedModel {
  name: string;
  session: ort.InferenceSession;
  encode: (text: string) => number[];
  decode: (ids: readonly number[]) => string;
  nLayer: number;
  nHead: number;
  headDim: number;
  nPositions: number;
  vocabSize: number;
  eosTokenId: number;
}

export interface GenerationHooks {
  /** True once the caller has aborted; read before every decode step. */
  cancelled: () => boolean;
  onToken: (event: { delta: string; tokens: number; maxTokens: number; tokensPerSecond: number }) => void;
}

/**
 * Prefill, then one token per step with the KV cache. Feeds are built from the session's own
 * input names, so graphs with or without `position_ids` / `use_cache_branch` run alike; the
 * first step passes empty past tensors ([1, H, 0, D]).
 *
 * Context length: a prompt of n_positions tokens or more is refused (`prompt_too_long`);
 * otherwise max_new_tokens is clamped to n_positions − prompt tokens, and reaching the clamp
 * ends with finish_reason "length". An empty prompt starts from the end-of-text token, as
 * GPT-2 does for unconditional generation.
 */
export async function runGeneration(
  model: LoadedModel,
  prompt: string,
  params: ResolvedGenerationParameters,
  hooks: GenerationHooks,
): Promise<WorkerGenerationResult> {
  let promptIds = model.encode(prompt);
  if (promptIds.length === 0) promptIds = [model.eosTokenId];
  if (promptIds.length >= model.nPositions) {
    throw new ModelError("prompt_too_long", "the prompt does not fit the model's context", {
      prompt_tokens: promptIds.length,
      n_positions: model.nPositions,
    });
  }
  const maxTokens = Math.min(params.max_new_tokens, model.nPositions - promptIds.length);
  const random = new SeededRandom(params.seed);
  const detok = new IncrementalDecoder(model.decode);
  const stops = new StopSequenceMatcher(params.stop);
  const inputNames = new Set(model.session.inputNames);
  const seen: number[] = [...promptIds];
  const generated: number[] = [];
  let text = "";
  let past: Record<string, ort.Tensor> = emptyPast(model);
  let pastLength = 0;
  let stepIds = promptIds;
  let firstTokenAt = 0;
  let lastTokenAt = 0;
  let finishReason: FinishReason = "length";

  while (generated.length < maxTokens) {
    if (hooks.cancelled()) {
      finishReason = "cancelled";
      break;
    }
    const feeds = buildFeeds(inputNames, stepIds, pastLength, past);
    const outputs = await model.session.run(feeds);
    const logitsTensor = outputs.logits;
    if (logitsTensor === undefined) throw new ModelError("model_io_mismatch", "the model returned no logits", { model: model.name });
    const all = logitsTensor.data as Float32Array;
    // Only the last position decides the next token; copy it because sampling edits in place.
    const logits = all.slice(all.length - model.vocabSize);
    past = nextPast(model, outputs);
    pastLength += stepIds.length;

    const id = sampleNextToken(logits, seen, params, random);
    lastTokenAt = performance.now();
    if (generated.length === 0) firstTokenAt = lastTokenAt;
    generated.push(id);
    seen.push(id);
    stepIds = [id];

    let delta = "";
    let done = false;
    if (id === model.eosTokenId) {
      finishReason = "eos";
      done = true;
    } else {
      const step = stops.push(detok.push(id));
      delta = step.delta;
      if (step.stopped) {
        finishReason = "stop";
        done = true;
      }
    }
    if (!done && generated.length >= maxTokens) done = true;
    // Held-back text (an incomplete character, a possible stop prefix) goes out with the last token.
    if (done && finishReason !== "stop") {
      const rest = flush(detok, stops);
      delta += rest.text;
      if (rest.stopped) finishReason = "stop";
    }
    text += delta;
    const seconds = (lastTokenAt - firstTokenAt) / 1000;
    hooks.onToken({ delta, tokens: generated.length, maxTokens, tokensPerSecond: seconds > 0 ? (generated.length - 1) / seconds : 0 });
    if (done) break;
  }
  // Cancelled: what was held back is still part of what was generated.
  if (finishReason === "cancelled") text += flush(detok, stops).text;
  return {
    text,
    finishReason,
    tokenIds: generated,
    promptTokens: promptIds.length,
    maxTokens,
    decodeSeconds: (lastTokenAt - firstTokenAt) / 1000,
  };
}

function flush(detok: IncrementalDecoder, stops: StopSequenceMatcher): { text: string; stopped: boolean } {
  const step = stops.push(detok.flush());
  return step.stopped ? { text: step.delta, stopped: true } : { text: step.delta + stops.flush(), stopped: false };
}

function emptyPast(model: LoadedModel): Record<string, ort.Tensor> {
  const past: Record<string, ort.Tensor> = {};
  const empty = new Float32Array(0);
  for (let i = 0; i < model.nLayer; i++) {
    past[`past_key_values.${i}.key`] = new ort.Tensor("float32", empty, [1, model.nHead, 0, model.headDim]);
    past[`past_key_values.${i}.value`] = new ort.Tensor("float32", empty, [1, model.nHead, 0, model.headDim]);
  }
  return past;
}

function nextPast(model: LoadedModel, outputs: ort.InferenceSession.OnnxValueMapType): Record<string, ort.Tensor> {
  const past: Record<string, ort.Tensor> = {};
  for (let i = 0; i < model.nLayer; i++) {
    for (const part of ["key", "value"]) {
      const present = outputs[`present.${i}.${part}`];
      if (present === undefined) throw new ModelError("model_io_mismatch", "the model returned no present key/value", { model: model.name, layer: i });
      past[`past_key_values.${i}.${part}`] = present;
    }
  }
  return past;
}

function buildFeeds(inputNames: Set<string>, stepIds: number[], pastLength: number, past: Record<string, ort.Tensor>): Record<string, ort.Tensor> {
  const n = stepIds.length;
  const feeds: Record<string, ort.Tensor> = {
    input_ids: new ort.Tensor("int64", BigInt64Array.from(stepIds, (v) => BigInt(v)), [1, n]),
    attention_mask: new ort.Tensor("int64", new BigInt64Array(pastLength + n).fill(1n), [1, pastLength + n]),
  };
  if (inputNames.has("position_ids")) {
    const pos = new BigInt64Array(n);
    for (let i = 0; i < n; i++) pos[i] = BigInt(pastLength + i);
    feeds.position_ids = new ort.Tensor("int64", pos, [1, n]);
  }
  if (inputNames.has("use_cache_branch")) feeds.use_cache_branch = new ort.Tensor("bool", new Uint8Array([pastLength > 0 ? 1 : 0]), [1]);
  for (const [name, tensor] of Object.entries(past)) if (inputNames.has(name)) feeds[name] = tensor;
  return feeds;
}
