import type { DecodeResult } from "./batch-decoder.js";
import type { SamplingParams } from "./sampling.js";
import type { DeviceRequest, SessionSettings } from "./session-factory.js";

/**
 * Messages between OnnxEngine (main thread) and an inference worker. One worker owns one
 * device and a session for every configured model on it; concurrent generations of a model
 * share its decode steps, up to maxBatch at once (batch-decoder.ts), and the rest wait. Workers see token ids only: the
 * tokenizer (transformers.js, whose own onnxruntime binding cannot load in a second thread)
 * stays on the main thread.
 *
 * main → worker: load (once) → generate* → close
 * worker → main: loaded | load_failed; per generate: token* then done | failed; closed
 *
 * Cancellation does not travel as a message (the worker's thread is busy in session.run):
 * each generate carries a SharedArrayBuffer flag that the main thread sets and the worker
 * reads before every decode step.
 */
export interface WorkerModelSpec {
  name: string;
  onnxPath: string;
  nLayer: number;
  nHead: number;
  headDim: number;
  vocabSize: number;
  eosTokenId: number;
  /** The graph's logits are for the last position only (ModelInfo.lastLogitsOnly). */
  lastLogitsOnly: boolean;
  /** The graph outputs new_key_values (ModelInfo.newKeyValues). */
  newKeyValues: boolean;
}

export interface LoadMessage {
  type: "load";
  models: WorkerModelSpec[];
  device: DeviceRequest;
  settings: SessionSettings;
  /** Most sequences of one model in one decode step (continuous batching). */
  maxBatch: number;
}

export interface GenerateMessage {
  type: "generate";
  id: number;
  model: string;
  promptIds: number[];
  maxTokens: number;
  sampling: SamplingParams;
  seed: number;
  /** Int32Array(1) over this buffer: non-zero once the caller aborts or a stop sequence is seen. */
  cancelFlag: SharedArrayBuffer;
}

export interface CloseMessage {
  type: "close";
}

export type ToWorker = LoadMessage | GenerateMessage | CloseMessage;

export interface LoadedModelSummary {
  name: string;
  device: string;
  fallbackReason?: string;
}

export interface WireError {
  code: string;
  message: string;
  retryable: boolean;
  details?: Record<string, unknown>;
}

export type FromWorker =
  | { type: "loaded"; models: LoadedModelSummary[] }
  | { type: "load_failed"; error: WireError }
  | { type: "token"; id: number; tokenId: number; count: number }
  | { type: "done"; id: number; result: DecodeResult }
  | { type: "failed"; id: number; error: WireError }
  | { type: "closed" };
