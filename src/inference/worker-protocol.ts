import type { ResolvedGenerationParameters } from "../protocol/generation.js";
import type { FinishReason } from "./engine.js";
import type { DeviceRequest, SessionSettings } from "./session-factory.js";

/**
 * Messages between OnnxEngine (main thread) and an inference worker. One worker owns one
 * device and every configured model's session on it; it runs one generation at a time
 * (session.run blocks its thread) and queues the rest.
 *
 * main → worker: load (once) → generate* → close
 * worker → main: loaded | load_failed; per generate: token* then done | failed; closed
 *
 * Cancellation does not travel as a message (the worker's thread is busy in session.run):
 * each generate carries a SharedArrayBuffer flag that the main thread sets and the worker
 * reads between decode steps.
 */
export interface LoadMessage {
  type: "load";
  models: { name: string; dir: string }[];
  device: DeviceRequest;
  settings: SessionSettings;
}

export interface GenerateMessage {
  type: "generate";
  id: number;
  model: string;
  prompt: string;
  params: ResolvedGenerationParameters;
  /** Int32Array(1) over this buffer: non-zero once the caller aborts. */
  cancelFlag: SharedArrayBuffer;
}

export interface CloseMessage {
  type: "close";
}

export type ToWorker = LoadMessage | GenerateMessage | CloseMessage;

export interface LoadedModelSummary {
  name: string;
  device: string;
  nPositions: number;
  fallbackReason?: string;
}

export interface WireError {
  code: string;
  message: string;
  retryable: boolean;
  details?: Record<string, unknown>;
}

export interface WorkerGenerationResult {
  text: string;
  finishReason: FinishReason;
  tokenIds: number[];
  promptTokens: number;
  maxTokens: number;
  /** Seconds between the first and the last generated token (0 for one token). */
  decodeSeconds: number;
}

export type FromWorker =
  | { type: "loaded"; models: LoadedModelSummary[] }
  | { type: "load_failed"; error: WireError }
  | { type: "token"; id: number; delta: string; tokens: number; maxTokens: number; tokensPerSecond: number }
  | { type: "done"; id: number; result: WorkerGenerationResult }
  | { type: "failed"; id: number; error: WireError }
  | { type: "closed" };
