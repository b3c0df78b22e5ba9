import { Writable } from "node:stream";
import path from "node:path";
import { pino, type Logger } from "pino";
import { expect } from "vitest";
import type { InferenceConfig } from "../../src/inference/config.js";
import { checkCudaProvider, describeCudaProviderProblem } from "../../src/inference/cuda-provider.js";
import type { ResolvedGenerationParameters } from "../../src/protocol/generation.js";

/** The models folder the postinstall step fills with tiny-gpt2. */
export const MODELS_DIR = path.resolve(import.meta.dirname, "../../models");

/**
 * A CUDA device id no host has. Asking for it takes the path where CUDA cannot run the session
 * on every host: here, where the provider is not installed, and on a GPU host after
 * `npm run setup:cuda`, where onnxruntime refuses the device id.
 */
export const NO_SUCH_DEVICE = 4096;

/**
 * The reason the engine gives when CUDA cannot run a session: what this host is missing (the
 * provider's files or libraries, named), or, where nothing is missing, onnxruntime's own error.
 */
export function expectCudaFailureReason(reason: unknown): void {
  const missing = describeCudaProviderProblem(checkCudaProvider());
  if (missing !== "") expect(reason).toBe(missing);
  else expect(String(reason).trim()).not.toBe("");
}

export function engineConfig(over: Partial<InferenceConfig> = {}): InferenceConfig {
  return {
    executionProvider: "cpu",
    deviceIds: [],
    modelsDir: MODELS_DIR,
    models: ["tiny-gpt2"],
    intraOpThreads: 1,
    interOpThreads: 1,
    graphOptimizationLevel: "all",
    ...over,
  };
}

export function greedy(maxNewTokens: number, over: Partial<ResolvedGenerationParameters> = {}): ResolvedGenerationParameters {
  return { max_new_tokens: maxNewTokens, temperature: 0, top_k: 0, top_p: 1, repetition_penalty: 1, stop: [], seed: 1, ...over };
}

/** A pino logger whose records are kept for assertions. */
export function capturingLogger(): { log: Logger; records: Record<string, unknown>[] } {
  const records: Record<string, unknown>[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const line of chunk.toString().split("\n")) if (line.trim() !== "") records.push(JSON.parse(line) as Record<string, unknown>);
      done();
    },
  });
  return { log: pino({ level: "debug" }, stream), records };
}
