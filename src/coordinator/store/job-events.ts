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
 */
export class JobEvents {
  private readonly emitter = new EventEmitter();

  constructor() {
    this.emitter.setMaxListeners(0);
  }

  publish(event: JobEvent): void {
    this.emitter.emit("change", event);
    this.emitter.emit(`change:${event.jobId}`, event);
  }

  publishProgress(event: ProgressEvent): void {
    this.emitter.emit(`progress:${event.jobId}`, event);
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
