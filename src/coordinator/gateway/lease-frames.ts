import type { FailFrame, HeartbeatFrame, ProgressFrame, ReleasedFrame, StartedFrame, TextFrame } from "../../protocol/frames.js";
import type { CoordinatorContext } from "../context.js";
import type { LeaseRef } from "../store/job-store.js";
import { leaseKey, type HeldLease, type MinerSession } from "./miner-session.js";
import { clampProgress, plausibleLoad } from "./plausibility.js";

/**
 * The frames that keep or end a lease: started, progress, text, heartbeat, fail, released.
 *
 * Renewals are coalesced: a lease this connection holds is extended in the store at most once
 * per third of the lease TTL, however many progress frames or heartbeat entries name it, so one
 * connection cannot turn frames into fsyncs. Live progress goes to SSE subscribers from memory
 * (JobEvents) on every frame and into the job row at the renewals. A frame for a lease this
 * connection does not hold touches no store: the miner is told to stop. fail and released end
 * the lease and are fenced in the store. Text frames (protocol 4) are progress frames that also
 * carry the generated text: it goes to JobEvents, in memory only, never to the store.
 */
export class LeaseFrames {
  private readonly started = new WeakSet<HeldLease>();

  constructor(private readonly ctx: CoordinatorContext) {}

  private get renewEveryMs(): number {
    return this.ctx.config.scheduler.leaseTtlMs / 3;
  }

  async markStarted(s: MinerSession, f: StartedFrame): Promise<void> {
    const lease = s.held(f.job_id, f.attempt, f.lease_token);
    if (lease === undefined || this.started.has(lease)) return;
    this.started.add(lease);
    const now = this.ctx.now();
    if (await this.ctx.store.markRunning(ref(f, s), now, this.ctx.config.scheduler.leaseTtlMs)) lease.renewedAt = now;
  }

  async progress(s: MinerSession, f: ProgressFrame | TextFrame): Promise<void> {
    const lease = s.held(f.job_id, f.attempt, f.lease_token);
    if (lease === undefined) {
      s.stop(f.job_id, f.attempt, "lease_lost");
      return;
    }
    const now = this.ctx.now();
    // A hostile miner's text is bounded by what its tokens could spell (GPT-2 tokens are short).
    if (f.type === "text") this.ctx.events.publishText({ jobId: f.job_id, attempt: f.attempt, index: f.index, delta: f.delta }, false, 64 * (lease.maxTokens + 1));
    const { tokens, tokensPerSecond } = clampProgress({ tokens: f.tokens, tokens_per_s: f.tokens_per_s }, lease.maxTokens, this.ctx.config.gateway);
    // Below 100 until the result is committed: 100 means "done and downloadable".
    const progress = lease.maxTokens > 0 ? Math.min(99, (100 * tokens) / lease.maxTokens) : 0;
    this.ctx.events.publishProgress({ jobId: f.job_id, attempt: f.attempt, progress, tokens, maxTokens: lease.maxTokens, tokensPerSecond, at: now });
    await this.renewIfDue(s, lease, now, progress);
  }

  async heartbeat(s: MinerSession, f: HeartbeatFrame): Promise<void> {
    if (f.gpus !== undefined) s.gpuLoad = plausibleLoad(s.gpus, f.gpus);
    const seen = new Set<string>();
    for (const entry of f.in_flight) {
      const key = leaseKey(entry.job_id, entry.attempt);
      if (seen.has(key)) continue;
      seen.add(key);
      const lease = s.held(entry.job_id, entry.attempt, entry.lease_token);
      if (lease === undefined) {
        if (entry.state === "running") s.stop(entry.job_id, entry.attempt, "lease_lost");
        continue;
      }
      const live = this.ctx.events.liveProgress(entry.job_id);
      await this.renewIfDue(s, lease, this.ctx.now(), live?.attempt === entry.attempt ? live.progress : undefined);
    }
  }

  async fail(s: MinerSession, f: FailFrame): Promise<void> {
    const outcome = await this.ctx.store.failAttempt(
      ref(f, s),
      { code: f.code, message: f.message, retryable: f.retryable },
      this.ctx.now(),
      this.ctx.config.scheduler.requeueBackoffMs,
    );
    s.drop(f.job_id, f.attempt);
    s.send({ type: "ack", job_id: f.job_id, attempt: f.attempt, of: "fail", status: outcome === "stale" ? "stale" : "committed" });
    s.log.info({ jobId: f.job_id, attempt: f.attempt, code: f.code, outcome }, "attempt failed");
  }

  async released(s: MinerSession, f: ReleasedFrame): Promise<void> {
    const outcome = await this.ctx.store.releaseLease(ref(f, s), this.ctx.now());
    s.drop(f.job_id, f.attempt);
    if (f.reason === "draining" || f.reason === "shutdown") s.draining = true;
    s.send({ type: "ack", job_id: f.job_id, attempt: f.attempt, of: "released", status: outcome === "stale" ? "stale" : "committed" });
    s.log.info({ jobId: f.job_id, attempt: f.attempt, reason: f.reason, outcome }, "job handed back");
  }

  private async renewIfDue(s: MinerSession, lease: HeldLease, now: number, progress: number | undefined): Promise<void> {
    if (now - lease.renewedAt < this.renewEveryMs) return;
    const r = await this.ctx.store.renewLease(
      { jobId: lease.jobId, attempt: lease.attempt, leaseToken: lease.leaseToken, minerId: s.minerId },
      now,
      this.ctx.config.scheduler.leaseTtlMs,
      progress,
    );
    if (!r.renewed) {
      s.stop(lease.jobId, lease.attempt, "lease_lost");
      s.drop(lease.jobId, lease.attempt);
      return;
    }
    lease.renewedAt = now;
    if (r.cancelRequested) s.stop(lease.jobId, lease.attempt, "cancelled");
  }
}

/** The lease a frame names, presented by the session's miner. */
function ref(f: { job_id: string; attempt: number; lease_token: string }, s: MinerSession): LeaseRef {
  return { jobId: f.job_id, attempt: f.attempt, leaseToken: f.lease_token, minerId: s.minerId };
}
