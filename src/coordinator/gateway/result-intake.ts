import { assembleResult, type ResultChunkFrame, type ResultFrame } from "../../protocol/frames.js";
import type { CoordinatorContext } from "../context.js";
import type { CommitOutcome } from "../store/job-store.js";
import { leaseKey, type MinerSession } from "./miner-session.js";

/**
 * Result frames: chunks buffered per connection (capped, see result-chunks.ts), the output
 * checked (chunks complete, UTF-8, size, sha256), written to the result store and committed by
 * compare-and-set on the lease. A file is never left without its commit.
 */
export class ResultIntake {
  /** Per job, the tail of the result frames being handled (see oneResultAtATime). */
  private readonly tails = new Map<string, Promise<void>>();

  constructor(private readonly ctx: CoordinatorContext) {}

  chunk(s: MinerSession, frame: ResultChunkFrame): void {
    // Only for a lease this connection holds: the result that follows others is acked "stale".
    if (s.held(frame.job_id, frame.attempt, frame.lease_token) === undefined) {
      s.log.debug({ jobId: frame.job_id, attempt: frame.attempt }, "result chunk for a lease not held dropped");
      return;
    }
    const refusal = s.chunks.add(leaseKey(frame.job_id, frame.attempt), frame);
    if (refusal !== undefined) {
      s.log.warn({ jobId: frame.job_id, attempt: frame.attempt, code: refusal.code }, "result chunks refused");
      s.send({ type: "error", code: refusal.code, message: refusal.message, fatal: false });
    }
  }

  async result(s: MinerSession, f: ResultFrame): Promise<void> {
    const { chunks, refused } = s.chunks.take(leaseKey(f.job_id, f.attempt));
    const assembled = refused === undefined ? assembleResult(f, chunks) : { ok: false as const, reason: refused };
    if (!assembled.ok) {
      this.ctx.metrics.results.inc({ outcome: "invalid" });
      s.send({ type: "ack", job_id: f.job_id, attempt: f.attempt, of: "result", status: "invalid", message: assembled.reason.slice(0, 2048) });
      return;
    }
    await this.oneResultAtATime(f.job_id, () => this.store(s, f, assembled.bytes));
  }

  /**
   * Results of one job are handled one at a time, across connections: a miner that reconnects
   * resends its result while the first copy may still be in flight on the old connection. Storing
   * and committing are two steps, so without this two copies could both pass the "completed?"
   * check and the later file would replace the committed one under the same name.
   */
  private async oneResultAtATime(jobId: string, fn: () => Promise<void>): Promise<void> {
    const run = (this.tails.get(jobId) ?? Promise.resolve()).then(fn);
    const tail = run.catch(() => undefined);
    this.tails.set(jobId, tail);
    try {
      await run;
    } finally {
      if (this.tails.get(jobId) === tail) this.tails.delete(jobId);
    }
  }

  private async store(s: MinerSession, f: ResultFrame, bytes: Buffer): Promise<void> {
    const now = this.ctx.now();
    const ack = (status: CommitOutcome, message?: string): void => {
      s.drop(f.job_id, f.attempt);
      this.ctx.metrics.results.inc({ outcome: status });
      s.send({ type: "ack", job_id: f.job_id, attempt: f.attempt, of: "result", status, ...(message === undefined ? {} : { message }) });
    };
    // Read first, even for a lease this connection holds, where a store reuses a name: another
    // connection of the same miner (a reconnect) may hold the lease too and have committed
    // already, and storing this copy would write over the committed file, which has the same
    // name (test/reliability/races.test.ts). Where every put is a new object and this connection
    // holds the lease, nothing is read: the commit's compare-and-set answers committed, duplicate
    // or stale by itself, and a copy not committed is removed below.
    const held = s.held(f.job_id, f.attempt, f.lease_token);
    let maxTokens: number;
    if (held !== undefined && this.ctx.results.uniqueLocations) {
      maxTokens = held.maxTokens;
    } else {
      const current = await this.ctx.store.getJobById(f.job_id);
      if (current === null) return ack("stale", "unknown job");
      if (current.status === "completed") {
        const outcome = current.result?.attempt === f.attempt && current.result.sha256 === f.sha256 ? "duplicate" : "stale";
        ack(outcome);
        s.log.info({ jobId: f.job_id, attempt: f.attempt, outcome }, "result received");
        return;
      }
      maxTokens = current.parameters.max_new_tokens;
    }
    const stored = await this.ctx.results.put(f.job_id, f.attempt, bytes);
    // The text still waiting to go to other replicas goes before the completion does.
    if (this.ctx.events.liveText(f.job_id)?.local === true) await this.ctx.events.sendPendingText();
    let outcome: CommitOutcome;
    try {
      outcome = await this.ctx.store.commitResult(
        { jobId: f.job_id, attempt: f.attempt, leaseToken: f.lease_token, minerId: s.minerId },
        {
          sha256: stored.sha256,
          bytes: stored.bytes,
          location: stored.location,
          finishReason: f.finish_reason,
          // Miner-reported figures, clamped to what the job allows before clients and estimates see them.
          usage: { prompt_tokens: f.usage.prompt_tokens, completion_tokens: Math.min(f.usage.completion_tokens, maxTokens) },
          tokensPerSecond: Math.min(f.timing.tokens_per_second, this.ctx.config.gateway.maxTokensPerSecond),
          attempt: f.attempt,
        },
        now,
      );
    } catch (err) {
      // Not committed, and no other copy of this job's result is in flight: no file without its commit.
      await this.ctx.results.remove(stored.location).catch(() => undefined);
      throw err;
    }
    if (outcome !== "committed") {
      const after = await this.ctx.store.getJobById(f.job_id);
      if (after?.result?.location !== stored.location) await this.ctx.results.remove(stored.location);
    }
    ack(outcome);
    s.log.info({ jobId: f.job_id, attempt: f.attempt, outcome, bytes: stored.bytes }, "result received");
  }
}
