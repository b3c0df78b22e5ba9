import { createHash } from "node:crypto";
import type { Logger } from "../common/logger.js";
import { toAppError } from "../common/errors.js";
import type { Engine, GenerateResult } from "../inference/engine.js";
import { TextStream } from "./text-stream.js";
import {
  RESULT_CHUNK_BYTES,
  RESULT_INLINE_MAX_BYTES,
  RESULT_MAX_CHUNKS,
  type AckFrame,
  type AssignFrame,
  type CancelFrame,
  type InFlight,
  type LeaseRef,
  type MinerFrame,
  type WelcomeFrame,
} from "../protocol/frames.js";

/**
 * Runs assignments through the Engine, one AbortController per job:
 *
 *   assign ─▶ running ──(engine returns)──────────▶ finished (result frames kept until ack)
 *                │  cancel frame ─▶ abort ─▶ fail{code:"cancelled"}
 *                │  timeout_seconds ─▶ abort ─▶ fail{code:"timed_out"}
 *                │  release() (drain) ─▶ abort ─▶ released{reason}
 *                └  welcome.refused ─▶ abort ─▶ dropped silently (the lease is gone)
 *
 * A finished job stays tracked (and listed in hello/heartbeat `in_flight` as "finished") until
 * the coordinator acknowledges its final frame, so a result produced while the connection was
 * down is resent after the reconnect. An ack "invalid" resends up to MAX_RESENDS times.
 */
const MAX_RESENDS = 3;

type AbortKind = "cancelled" | "timed_out" | "released" | "dropped";

interface TrackedJob {
  ref: LeaseRef;
  state: "running" | "finished";
  controller: AbortController;
  abort?: { kind: AbortKind; reason: string };
  /** Frames to send (and resend) until acknowledged; empty while running. */
  final: MinerFrame[];
  resends: number;
  done: Promise<void>;
  log: Logger;
  /** The text sent as it comes, while running on a protocol 4 connection. */
  text?: TextStream;
}

export interface JobRunnerOptions {
  engine: Engine;
  /** Sends a frame now; false when the connection is down (the runner resends what matters). */
  send: (frame: MinerFrame) => boolean;
  log: Logger;
  /** Total concurrent jobs. */
  slots: number;
  /** Least time between progress frames of one job, ms. */
  progressIntervalMs: number;
  /**
   * Protocol 4 text streaming (text frames replace progress frames) while `enabled()` says the
   * connection speaks it; absent, progress frames only.
   */
  text?: { enabled: () => boolean; intervalMs: number; maxTokens: number };
  /** Called when a running job ends (its slot is free again). */
  onSlotFreed?: () => void;
  /** Called with the code when the engine fails a job (not for cancel/timeout/release). */
  onEngineError?: (code: string) => void;
  /** Called when a job's final frame was acknowledged (or dropped) and it is no longer tracked. */
  onSettled?: () => void;
  /** Called once per job when it ends, with how it ended (for metrics). */
  onJobEnded?: (outcome: "completed" | "failed" | "cancelled" | "timed_out" | "released" | "dropped", tokens: number, tokensPerSecond?: number) => void;
}

export function jobKey(jobId: string, attempt: number): string {
  return `${jobId}#${attempt}`;
}

/** The frames that carry an output: inline result, or result_chunk × n then result{chunks}. */
export function resultFrames(ref: LeaseRef, r: GenerateResult): MinerFrame[] {
  const bytes = Buffer.from(r.text, "utf8");
  const base = {
    job_id: ref.job_id,
    attempt: ref.attempt,
    lease_token: ref.lease_token,
    output_bytes: bytes.length,
    sha256: createHash("sha256").update(bytes).digest("hex"),
    finish_reason: r.finish_reason,
    usage: r.usage,
    timing: r.timing,
  };
  if (bytes.length <= RESULT_INLINE_MAX_BYTES) return [{ type: "result", ...base, output: r.text }];
  const chunks: MinerFrame[] = [];
  for (let off = 0, seq = 0; off < bytes.length; off += RESULT_CHUNK_BYTES, seq++) {
    chunks.push({
      type: "result_chunk",
      job_id: ref.job_id,
      attempt: ref.attempt,
      lease_token: ref.lease_token,
      seq,
      data: bytes.subarray(off, off + RESULT_CHUNK_BYTES).toString("base64"),
    });
  }
  if (chunks.length > RESULT_MAX_CHUNKS) throw new Error("output too large");
  return [...chunks, { type: "result", ...base, chunks: chunks.length }];
}

export class JobRunner {
  private readonly jobs = new Map<string, TrackedJob>();
  private readonly idleWaiters = new Set<() => void>();

  constructor(private readonly options: JobRunnerOptions) {}

  /** Jobs currently running on the engine. */
  get running(): number {
    let n = 0;
    for (const j of this.jobs.values()) if (j.state === "running") n++;
    return n;
  }

  get freeSlots(): number {
    return Math.max(0, this.options.slots - this.running);
  }

  /** Jobs still held: running, or finished with the final frame not yet acknowledged. */
  get tracked(): number {
    return this.jobs.size;
  }

  /** For hello (after a reconnect) and heartbeat. */
  inFlight(): InFlight[] {
    return [...this.jobs.values()].map((j) => ({ ...j.ref, state: j.state }));
  }

  assign(frame: AssignFrame): void {
    const ref: LeaseRef = { job_id: frame.job.job_id, attempt: frame.attempt, lease_token: frame.lease_token };
    const key = jobKey(ref.job_id, ref.attempt);
    const log = this.options.log.child({ jobId: ref.job_id, attempt: ref.attempt });
    if (this.jobs.has(key)) {
      log.warn("duplicate assign ignored");
      return;
    }
    if (this.freeSlots === 0) {
      // The coordinator over-assigned (a pull raced a finishing job): hand it straight back.
      log.warn("assign without a free slot: handing it back");
      this.track(ref, log, [{ type: "released", ...ref, reason: "no_free_slot" }]);
      return;
    }
    if (!this.options.engine.models().some((m) => m.name === frame.job.model)) {
      log.warn({ model: frame.job.model }, "assigned a model this miner does not serve");
      this.track(ref, log, [
        { type: "fail", ...ref, code: "model_unavailable", message: "model is not loaded on this miner", retryable: true },
      ]);
      return;
    }
    const job: TrackedJob = {
      ref,
      state: "running",
      controller: new AbortController(),
      final: [],
      resends: 0,
      done: Promise.resolve(),
      log,
    };
    this.jobs.set(key, job);
    job.done = this.execute(job, frame);
  }

  /** Hands an assignment straight back without running it (e.g. it arrived while draining). */
  handBack(frame: AssignFrame, reason: string): void {
    const ref: LeaseRef = { job_id: frame.job.job_id, attempt: frame.attempt, lease_token: frame.lease_token };
    if (this.jobs.has(jobKey(ref.job_id, ref.attempt))) return;
    const log = this.options.log.child({ jobId: ref.job_id, attempt: ref.attempt });
    log.info({ reason }, "assign handed back unrun");
    this.track(ref, log, [{ type: "released", ...ref, reason }]);
  }

  /** A cancel frame: stop within one decode step and report fail{code:"cancelled"}. */
  cancel(frame: CancelFrame): void {
    const job = this.jobs.get(jobKey(frame.job_id, frame.attempt));
    if (job === undefined || job.state !== "running") {
      this.options.log.debug({ jobId: frame.job_id, attempt: frame.attempt }, "cancel for a job not running");
      return;
    }
    this.abort(job, "cancelled", frame.reason);
  }

  ack(frame: AckFrame): void {
    const key = jobKey(frame.job_id, frame.attempt);
    const job = this.jobs.get(key);
    if (job === undefined || job.state !== "finished") return;
    const last = job.final[job.final.length - 1];
    if (last === undefined || last.type !== frame.of) return;
    if (frame.status === "invalid" && job.resends < MAX_RESENDS) {
      job.resends++;
      job.log.warn({ status: frame.status }, "result refused as invalid: resending");
      this.sendFinal(job);
      return;
    }
    job.log.info({ of: frame.of, status: frame.status }, "final frame acknowledged");
    this.jobs.delete(key);
    this.settled();
  }

  /** After a (re)connect: drop what the coordinator refused, resend unacknowledged final frames. */
  welcome(frame: WelcomeFrame): void {
    for (const r of frame.refused) {
      const key = jobKey(r.job_id, r.attempt);
      const job = this.jobs.get(key);
      if (job === undefined) continue;
      job.log.warn({ reason: r.reason }, "coordinator refused the lease: dropping the job");
      if (job.state === "running") this.abort(job, "dropped", r.reason);
      else {
        this.jobs.delete(key);
        this.settled();
      }
    }
    for (const job of this.jobs.values()) {
      if (job.state === "finished") this.sendFinal(job);
      // The lease may now live on another replica, which has none of the text: all of it again.
      else if (this.options.text?.enabled() === true) job.text?.resend();
    }
  }

  /** Aborts every running job and hands it back with `released{reason}`. */
  release(reason: string): void {
    for (const job of this.jobs.values()) if (job.state === "running") this.abort(job, "released", reason);
  }

  /** Resolves true once no job is running, or false when `timeoutMs` passes first. */
  waitIdle(timeoutMs: number, what: "running" | "tracked" = "running"): Promise<boolean> {
    const isIdle = (): boolean => (what === "running" ? this.running === 0 : this.jobs.size === 0);
    if (isIdle()) return Promise.resolve(true);
    return new Promise((resolve) => {
      const check = (): void => {
        if (!isIdle()) return;
        clearTimeout(timer);
        this.idleWaiters.delete(check);
        resolve(true);
      };
      const timer = setTimeout(() => {
        this.idleWaiters.delete(check);
        resolve(false);
      }, timeoutMs);
      this.idleWaiters.add(check);
    });
  }

  /** Promise of every running job's end, for shutdown. */
  async allDone(): Promise<void> {
    await Promise.all([...this.jobs.values()].map((j) => j.done));
  }

  private abort(job: TrackedJob, kind: AbortKind, reason: string): void {
    if (job.abort !== undefined) return;
    job.abort = { kind, reason };
    job.log.info({ kind, reason }, "aborting job");
    job.controller.abort(new Error(kind));
  }

  private track(ref: LeaseRef, log: Logger, final: MinerFrame[]): void {
    const job: TrackedJob = {
      ref,
      state: "finished",
      controller: new AbortController(),
      final,
      resends: 0,
      done: Promise.resolve(),
      log,
    };
    this.jobs.set(jobKey(ref.job_id, ref.attempt), job);
    this.sendFinal(job);
  }

  private sendFinal(job: TrackedJob): void {
    for (const f of job.final) if (!this.options.send(f)) return;
  }

  private notifyIdle(): void {
    for (const w of [...this.idleWaiters]) w();
  }

  private settled(): void {
    this.notifyIdle();
    this.options.onSettled?.();
  }

  private async execute(job: TrackedJob, frame: AssignFrame): Promise<void> {
    const { ref, log } = job;
    // setTimeout overflows past 2^31-1 ms (~24.8 days) and would fire at once.
    const timeoutMs = Math.min(frame.job.timeout_seconds * 1000, 2 ** 31 - 1);
    const timer = setTimeout(() => this.abort(job, "timed_out", "timeout_seconds"), timeoutMs);
    const interval = this.options.progressIntervalMs;
    let lastProgress = -Infinity;
    const t = this.options.text;
    if (t !== undefined) job.text = new TextStream(ref, { send: (f) => this.options.send(f), intervalMs: t.intervalMs, maxTokens: t.maxTokens });
    log.info({ model: frame.job.model, maxTokens: frame.job.parameters.max_new_tokens }, "job started");
    this.options.send({ type: "started", ...ref });
    let final: MinerFrame[];
    let engineError: string | undefined;
    try {
      const result = await this.options.engine.generate({
        model: frame.job.model,
        prompt: frame.job.prompt,
        params: frame.job.parameters,
        signal: job.controller.signal,
        onToken: (e) => {
          const tokensPerSecond = Math.round(e.tokensPerSecond * 100) / 100;
          if (job.text !== undefined && this.options.text?.enabled() === true) {
            job.text.push(e.delta, e.tokens, tokensPerSecond);
            return;
          }
          const now = performance.now();
          if (now - lastProgress < interval) return;
          lastProgress = now;
          this.options.send({ type: "progress", ...ref, tokens: e.tokens, max_tokens: e.maxTokens, tokens_per_s: tokensPerSecond });
        },
      });
      // The text frames the result ends: the coordinator's live text is whole before the result.
      if (job.abort === undefined && this.options.text?.enabled() === true) job.text?.flush();
      final = job.abort === undefined ? resultFrames(ref, result) : this.abortedFrames(job);
      this.options.onJobEnded?.(job.abort?.kind ?? "completed", result.usage.completion_tokens, job.abort === undefined ? result.timing.tokens_per_second : undefined);
      if (job.abort === undefined) {
        log.info({ tokens: result.usage.completion_tokens, ms: Math.round(result.timing.total_ms) }, "job completed");
      }
    } catch (err) {
      if (job.abort !== undefined) {
        final = this.abortedFrames(job);
        this.options.onJobEnded?.(job.abort.kind, 0);
      } else {
        this.options.onJobEnded?.("failed", 0);
        const e = toAppError(err);
        log.error({ code: e.code }, "engine failed the job");
        final = [{ type: "fail", ...ref, code: e.code, message: e.message.slice(0, 2048), retryable: e.retryable }];
        engineError = e.code;
      }
    } finally {
      clearTimeout(timer);
      job.text?.close();
    }
    job.state = "finished";
    job.final = final;
    if (final.length === 0) this.jobs.delete(jobKey(ref.job_id, ref.attempt));
    else this.sendFinal(job);
    this.notifyIdle();
    if (engineError !== undefined) this.options.onEngineError?.(engineError);
    this.options.onSlotFreed?.();
    if (final.length === 0) this.options.onSettled?.();
  }

  private abortedFrames(job: TrackedJob): MinerFrame[] {
    const { ref } = job;
    const why = job.abort!;
    switch (why.kind) {
      case "cancelled":
        job.log.info({ reason: why.reason }, "job cancelled");
        return [{ type: "fail", ...ref, code: "cancelled", message: "cancelled by the coordinator", retryable: false }];
      case "timed_out":
        job.log.warn("job timed out");
        return [{ type: "fail", ...ref, code: "timed_out", message: "timeout_seconds ran out", retryable: false }];
      case "released":
        job.log.info({ reason: why.reason }, "job handed back");
        return [{ type: "released", ...ref, reason: why.reason }];
      case "dropped":
        return [];
    }
  }
}
