/**
 * llama.cpp (through node-llama-cpp 3.21.1, its prebuilt CPU binary) as the inference bench's
 * peer, on GGUF conversions of our weights (gguf-export.ts). It is fed our tokenizer's ids, so
 * tokenizer differences do not count. Contexts keep their KV cache in F32, as ours does, with
 * flash attention off (its CPU path rounds through F16), so that the F32 file computes what our
 * float32 graph computes; everything else is node-llama-cpp's default. Each function here runs
 * in a child process of bench/inference.ts.
 */
import { getLlama, LlamaLogLevel, type Llama, type LlamaContext, type LlamaContextSequence, type LlamaModel, type Token } from "node-llama-cpp";
import { logProbsOf } from "./distributions.js";

/** The prebuilt CPU binary with `threads` threads at most: build "never" means an error rather than a download or a compile. */
export function startLlama(threads: number): Promise<Llama> {
  return getLlama({ gpu: false, build: "never", maxThreads: threads, logLevel: LlamaLogLevel.error });
}

export function loadLlamaModel(llama: Llama, file: string): Promise<LlamaModel> {
  return llama.loadModel({ modelPath: file });
}

export function createLlamaContext(model: LlamaModel, threads: number, sequences: number, contextSize: number): Promise<LlamaContext> {
  return model.createContext({
    contextSize,
    sequences,
    threads,
    batchSize: 512,
    flashAttention: false,
    experimentalKvCacheKeyType: "F32",
    experimentalKvCacheValueType: "F32",
  });
}

export interface GreedyRun {
  ids: number[];
  /** From the call to the first new token (prefill included), ms. */
  ttftMs: number;
  /** New tokens after the first ÷ the time between the first and the last. */
  decodeTokensPerSecond: number;
}

/** Greedy decoding of `count` tokens after `prompt` on a fresh sequence history. */
export async function llamaGreedy(sequence: LlamaContextSequence, prompt: readonly number[], count: number): Promise<GreedyRun> {
  await sequence.clearHistory();
  const ids: number[] = [];
  const started = performance.now();
  let first = started;
  let last = started;
  for await (const token of sequence.evaluate(prompt as Token[], { temperature: 0 })) {
    last = performance.now();
    if (ids.length === 0) first = last;
    ids.push(token);
    if (ids.length >= count) break;
  }
  return { ids, ttftMs: first - started, decodeTokensPerSecond: ids.length > 1 ? (ids.length - 1) / ((last - first) / 1000) : 0 };
}

/**
 * Teacher-forced next-token log-probabilities: for `prompt` followed by `continuation`, the
 * distribution after the prompt and after each continuation token but the last, one per
 * continuation token. node-llama-cpp reports probabilities (softmax of the logits, no sampling
 * options applied), so a log-probability differs from a logit by the same constant across the
 * vocabulary: differences between tokens are logit differences.
 */
export async function llamaTeacherForced(sequence: LlamaContextSequence, vocabSize: number, prompt: readonly number[], continuation: readonly number[]): Promise<Float32Array[]> {
  await sequence.clearHistory();
  const want = { generateNext: { probabilities: true } };
  const input = [...prompt.slice(0, -1), [prompt[prompt.length - 1]!, want], ...continuation.slice(0, -1).map((t) => [t, want])] as Parameters<LlamaContextSequence["controlledEvaluate"]>[0];
  const out = await sequence.controlledEvaluate(input);
  const dists: Float32Array[] = [];
  for (let i = prompt.length - 1; i < input.length; i++) {
    const probabilities = out[i]?.next.probabilities;
    if (probabilities === undefined) throw new Error(`llama.cpp returned no probabilities at position ${i}`);
    dists.push(logProbsOf(probabilities, vocabSize));
  }
  return dists;
}
