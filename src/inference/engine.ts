import type { ResolvedGenerationParameters } from "../protocol/generation.js";

/**
 * The inference engine behind an interface, so the miner can be tested with a fake engine and
 * the engine without a miner. The real one is `OnnxEngine` (onnxruntime-node in a worker
 * thread); tests and fault injection use fakes that implement the same contract.
 */
export type FinishReason = "length" | "eos" | "stop" | "cancelled";

export interface TokenEvent {
  /** Text added by this step (may be "" while a multi-byte character is incomplete). */
  delta: string;
  /** Completion tokens generated so far. */
  tokens: number;
  /** `max_new_tokens` of the request (after any context-length clamp). */
  maxTokens: number;
  /** Decode throughput so far, tokens per second. */
  tokensPerSecond: number;
}

export interface GenerateRequest {
  /** Name of a loaded model (its folder name under the models dir). */
  model: string;
  prompt: string;
  params: ResolvedGenerationParameters;
  /** Aborting stops generation within one decode step; the result has finish_reason "cancelled". */
  signal?: AbortSignal;
  /** Called once per generated token, in order. */
  onToken?: (event: TokenEvent) => void;
}

export interface GenerateUsage {
  prompt_tokens: number;
  completion_tokens: number;
}

export interface GenerateTiming {
  /** From the call to the first generated token (includes prefill). */
  time_to_first_token_ms: number;
  /** Completion tokens per second over the decode phase. */
  tokens_per_second: number;
  total_ms: number;
}

export interface GenerateResult {
  text: string;
  finish_reason: FinishReason;
  usage: GenerateUsage;
  timing: GenerateTiming;
  /** Generated token ids, for comparing engines. */
  token_ids: number[];
}

export interface EngineModelInfo {
  name: string;
  /** "cuda:0", "cpu", … where the model's session runs. */
  device: string;
  n_positions: number;
}

export interface Engine {
  /** Loads the configured models and creates their sessions. Idempotent. */
  initialize(): Promise<void>;
  /** The models this engine can serve, once initialized. */
  models(): EngineModelInfo[];
  generate(request: GenerateRequest): Promise<GenerateResult>;
  /** Releases sessions and worker threads. Idempotent. */
  close(): Promise<void>;
}
