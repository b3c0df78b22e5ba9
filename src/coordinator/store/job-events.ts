import { EventEmitter } from "node:events";
import type { JobEvent } from "./job-store.js";

/** Live progress of a running attempt: not stored (the job row keeps the latest), only streamed. */
export interface ProgressEvent {
  jobId: string;
  attempt: number;
  progress: number;
  tokens: number;
  maxTokens: number;
  tokensPerSecond: number;
  at: number;
}

/**
 * In-process fan-out of job changes, published after each committed transaction (state changes,
 * also in the job_events table) and for live progress. The SSE route and the scheduler listen
 * here instead of polling the store.
 *
 * The latest progress of each running attempt is kept here too (the job row gets it only at the
 * coalesced lease renewals), until the job's next state change.
 */
export class JobEvents {
  private readonly emitter = new EventEmitter();
  private readonly live = new Map<string, ProgressEvent>();

  constructor() {
    this.emitter.setMaxListeners(0);
  }

  publish(event: JobEvent): void {
    if (event.type !== "running" && event.type !== "cancel_requested") this.live.delete(event.jobId);
    this.emitter.emit("change", event);
    this.emitter.emit(`change:${event.jobId}`, event);
  }

  publishProgress(event: ProgressEvent): void {
    this.live.set(event.jobId, event);
    this.emitter.emit(`progress:${event.jobId}`, event);
  }

  /** The latest progress of the job's running attempt, if any arrived since its last state change. */
  liveProgress(jobId: string): ProgressEvent | undefined {
    return this.live.get(jobId);
  }

  /** Every state change of every job; returns the unsubscribe function. */
  onChange(fn: (e: JobEvent) => void): () => void {
    this.emitter.on("change", fn);
    return () => this.emitter.off("change", fn);
  }

  /** State changes and progress of one job; returns the unsubscribe function. */
  onJob(jobId: string, onChange: (e: JobEvent) => void, onProgress: (e: ProgressEvent) => void): () => void {
    this.emitter.on(`change:${jobId}`, onChange);
    this.emitter.on(`progress:${jobId}`, onProgress);
    return () => {
      this.emitter.off(`change:${jobId}`, onChange);
      this.emitter.off(`progress:${jobId}`, onProgress);
    };
  }
}
