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
 * A piece of an attempt's generated text: the text is now `text.slice(0, index) + delta` (what a
 * client following it does too). Not stored anywhere but here, in memory, while the attempt runs.
 */
export interface TextEvent {
  jobId: string;
  attempt: number;
  index: number;
  delta: string;
}

/** The running text of an attempt, and whether its miner is connected here (this replica can resend it). */
export interface LiveText {
  attempt: number;
  text: string;
  local: boolean;
}

/** Most UTF-16 code units of live text kept per attempt; past it the stream stops (the download has it all). */
export const LIVE_TEXT_MAX_CHARS = 4 * 1024 * 1024;

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
  private readonly textSenders = new Set<() => Promise<void>>();
  private readonly emitter = new EventEmitter();
  private readonly live = new Map<string, ProgressEvent>();
  private readonly texts = new Map<string, LiveText>();

  constructor() {
    this.emitter.setMaxListeners(0);
  }

  publish(event: JobEvent): void {
    if (event.type !== "running" && event.type !== "cancel_requested") this.live.delete(event.jobId);
    if (event.type !== "assigned" && event.type !== "running" && event.type !== "cancel_requested") this.texts.delete(event.jobId);
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
    if (change.type !== "assigned" && change.type !== "running" && change.type !== "cancel_requested") this.texts.delete(change.jobId);
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

  /** Remote changes of one job (with the change), and resyncs (without); returns the unsubscribe function. */
  onJobRemote(jobId: string, fn: (change?: RemoteChange) => void): () => void {
    const onResync = (): void => fn();
    this.emitter.on(`remote:${jobId}`, fn);
    this.emitter.on("resync", onResync);
    return () => {
      this.emitter.off(`remote:${jobId}`, fn);
      this.emitter.off("resync", onResync);
    };
  }

  onResync(fn: () => void): () => void {
    this.emitter.on("resync", fn);
    return () => this.emitter.off("resync", fn);
  }

  /**
   * A piece of text of a running attempt, from its miner here (`remote` false) or from the
   * replica holding that miner. Only what is new is published (a resend of known text is not);
   * a newer attempt replaces an older one's text; an older attempt's piece is dropped. Returns
   * "gap" when the piece starts past the text known here (a missed piece: ask for the whole).
   */
  publishText(piece: TextEvent, remote = false, maxChars = LIVE_TEXT_MAX_CHARS): "ok" | "gap" {
    const cur = this.texts.get(piece.jobId);
    if (cur !== undefined && cur.attempt > piece.attempt) return "ok";
    const known = cur === undefined || cur.attempt < piece.attempt ? "" : cur.text;
    if (piece.index > known.length) return "gap";
    // Where the piece first differs from what is known: only from there on is it news.
    let k = 0;
    const overlap = Math.min(piece.delta.length, known.length - piece.index);
    while (k < overlap && piece.delta.charCodeAt(k) === known.charCodeAt(piece.index + k)) k++;
    const restart = cur === undefined || cur.attempt < piece.attempt;
    if (!restart && k === piece.delta.length) {
      if (!remote) cur.local = true;
      return "ok";
    }
    const index = piece.index + k;
    const delta = piece.delta.slice(k, k + Math.max(0, Math.min(maxChars, LIVE_TEXT_MAX_CHARS) - index));
    if (!restart && delta === "" && index >= known.length) return "ok";
    const text = known.slice(0, index) + delta;
    this.texts.set(piece.jobId, { attempt: piece.attempt, text, local: !remote || (cur?.local === true && !restart) });
    const event: TextEvent = { jobId: piece.jobId, attempt: piece.attempt, index, delta };
    this.emitter.emit(`text:${piece.jobId}`, event);
    if (!remote) this.emitter.emit("text", event);
    return "ok";
  }

  /** The running text of the job's live attempt known here, if any. */
  liveText(jobId: string): LiveText | undefined {
    return this.texts.get(jobId);
  }

  /** Text pieces from this replica's miners (to pass on to other replicas); returns the unsubscribe function. */
  onLocalText(fn: (e: TextEvent) => void): () => void {
    this.emitter.on("text", fn);
    return () => this.emitter.off("text", fn);
  }

  /**
   * Sends now the text of this replica's miners that waits to go to the other replicas (PgSignals
   * coalesces it for a few ms): result intake awaits it before a commit, so the text is out before
   * the completion's hint and a stream elsewhere has the whole output when `completed` comes,
   * instead of reading it back from the result store. Nothing to do on one node.
   */
  async sendPendingText(): Promise<void> {
    await Promise.all([...this.textSenders].map((send) => send()));
  }

  /** Registers what sendPendingText calls (PgSignals); returns the unregister function. */
  onSendPendingText(send: () => Promise<void>): () => void {
    this.textSenders.add(send);
    return () => this.textSenders.delete(send);
  }

  /** Someone here follows a job whose text this replica lacks (the replica holding its miner has it). */
  wantText(jobId: string): void {
    this.emitter.emit("want-text", jobId);
  }

  onWantText(fn: (jobId: string) => void): () => void {
    this.emitter.on("want-text", fn);
    return () => this.emitter.off("want-text", fn);
  }

  /** Whether a stream here follows the job's text. */
  followsText(jobId: string): boolean {
    return this.emitter.listenerCount(`text:${jobId}`) > 0;
  }

  /** Text pieces of one job; returns the unsubscribe function. */
  onJobText(jobId: string, fn: (e: TextEvent) => void): () => void {
    this.emitter.on(`text:${jobId}`, fn);
    return () => this.emitter.off(`text:${jobId}`, fn);
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
