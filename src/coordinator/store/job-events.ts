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

/** A state change committed by another replica, as its NOTIFY says: which job, which event number, which type. */
export interface RemoteChange {
  jobId: string;
  seq: number;
  type: string;
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

  /** Live progress; `remote` when another replica sent it (it is not sent on again). */
  publishProgress(event: ProgressEvent, remote = false): void {
    this.live.set(event.jobId, event);
    this.emitter.emit(`progress:${event.jobId}`, event);
    if (!remote) this.emitter.emit("progress", event);
  }

  /** Progress of the jobs running on this replica's miners; returns the unsubscribe function. */
  onLocalProgress(fn: (e: ProgressEvent) => void): () => void {
    this.emitter.on("progress", fn);
    return () => this.emitter.off("progress", fn);
  }

  /**
   * Another replica committed a change (a hint: the event itself is read from the store).
   * Listeners re-read what they follow; nothing is lost if a hint is (see resync).
   */
  publishRemote(change: RemoteChange): void {
    if (change.type !== "running" && change.type !== "cancel_requested") this.live.delete(change.jobId);
    this.emitter.emit("remote", change);
    this.emitter.emit(`remote:${change.jobId}`, change);
  }

  /** Hints may have been missed (the listening connection dropped, or a periodic check): re-read everything followed. */
  publishResync(): void {
    this.emitter.emit("resync");
  }

  /** Every remote change; returns the unsubscribe function. */
  onRemote(fn: (c: RemoteChange) => void): () => void {
    this.emitter.on("remote", fn);
    return () => this.emitter.off("remote", fn);
  }

  /** Remote changes of one job, and resyncs; returns the unsubscribe function. */
  onJobRemote(jobId: string, fn: () => void): () => void {
    this.emitter.on(`remote:${jobId}`, fn);
    this.emitter.on("resync", fn);
    return () => {
      this.emitter.off(`remote:${jobId}`, fn);
      this.emitter.off("resync", fn);
    };
  }

  onResync(fn: () => void): () => void {
    this.emitter.on("resync", fn);
    return () => this.emitter.off("resync", fn);
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
