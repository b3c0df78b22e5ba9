import type { Logger } from "../../common/logger.js";
import { errorMessage } from "../../common/errors.js";
import type { AssignFrame, GpuInfo } from "../../protocol/frames.js";
import type { CoordinatorContext } from "../context.js";
import type { RemoteChange } from "../store/job-events.js";
import type { Assignment, ReapedJob } from "../store/job-store.js";

/** Remote changes after which the miner holding the attempt must stop, and the reason it is told. */
const STOP_REASONS: Partial<Record<string, string>> = {
  cancel_requested: "cancelled",
  cancelled: "cancelled",
  timed_out: "timed_out",
  requeued: "lease_lost",
  failed: "lease_lost",
  expired: "lease_lost",
};

/** What the scheduler needs of a connected miner (the gateway's sessions implement it). */
export interface DispatchTarget {
  readonly minerId: string;
  readonly gpus: readonly GpuInfo[];
  readonly models: readonly string[];
  /** Whether to offer it a job now: free slots it asked for, not draining, connection open. */
  wantsWork(): boolean;
  /** How many jobs it would take now (its free slots asked for by its latest pull). */
  readonly credits: number;
  /** Sends the assign and records the lease it grants; false when the connection is gone. */
  offer(frame: AssignFrame, maxTokens: number, now: number): boolean;
  /** Tells the miner to stop an attempt (a cancel frame). */
  stop(jobId: string, attempt: number, reason: string): void;
}

/** The connected miners, as the scheduler reaches them. */
export interface Fleet {
  targets(): Iterable<DispatchTarget>;
  target(minerId: string): DispatchTarget | undefined;
}

/** Most claims of one dispatch round in flight at once (the store's pool is 10 by default). */
const CLAIM_WIDTH_MAX = 4;
/** Most jobs one claim asks for (a miner's free slots bound it first). */
const CLAIM_JOBS_MAX = 32;

const capabilityKeys = new WeakMap<DispatchTarget, string>();

/** What a claim depends on besides the queue: the miner's models and GPUs (fixed for a session). */
function capabilityKey(t: DispatchTarget): string {
  let k = capabilityKeys.get(t);
  if (k === undefined) {
    k = JSON.stringify([[...t.models].sort(), t.gpus.map((g) => [g.name, g.vram_total_mb]).sort()]);
    capabilityKeys.set(t, k);
  }
  return k;
}

/**
 * Hands queued jobs to connected miners and keeps leases honest.
 *
 * Dispatch: whenever a miner pulls or a job becomes queued, every session with free slots
 * (credits) claims the best jobs it can run from the store (priority, then age; matching by
 * model and GPU requirements inside `claimJobs`) and gets an `assign` for each — except sessions
 * of a capability whose last claim found nothing, until something is queued again (knownEmpty).
 * Runs are coalesced: a request during a run schedules one more run, never two at once.
 *
 * Reaper (every `reap_interval`): expired leases → requeued (attempt+1 on the next claim) or
 * failed when the attempt budget is spent, or cancelled when a cancel was requested; runs past
 * `timeout_seconds` → timed_out; queued past the queue TTL → expired. Miners that still hold a
 * reaped lease are told to stop. After a coordinator start, leases get one TTL of grace before
 * the reaper touches them, so miners can reconnect and resume.
 */
export class Scheduler {
  private dispatching = false;
  private again = false;
  private timer: NodeJS.Timeout | undefined;
  private readonly unsubscribe: (() => void)[] = [];
  private startedAt: number;
  private readonly log: Logger;
  private reaping: Promise<void> = Promise.resolve();
  private readonly dueTimers = new Set<NodeJS.Timeout>();
  /** The session served last: the next dispatch run starts after it (round-robin across runs). */
  private lastServed: string | undefined;
  /** Jobs that became queued (here or, by hint, on other replicas) since the last run began. */
  private newlyQueued = 0;
  /**
   * Capabilities whose latest claim found less than it asked for, with nothing queued since:
   * claiming for them again would find nothing, so a run (a miner's pull after its result, most
   * often) skips them. Forgotten on every sign that a job may have become claimable: a queued or
   * requeued change here or by hint, a resync of the hints, a backoff ending, a lease handed
   * back, and every reaper tick (the periodic cover for a lost hint).
   */
  private readonly knownEmpty = new Set<string>();
  /** Bumped whenever knownEmpty is forgotten: a claim that began before may not mark it again. */
  private queueEpoch = 0;

  constructor(
    private readonly ctx: CoordinatorContext,
    private readonly fleet: Fleet,
  ) {
    this.startedAt = ctx.now();
    this.log = ctx.log.child({ component: "scheduler" });
  }

  start(): void {
    // The grace counts from when miners can reconnect (the server listens), not from construction:
    // building the app can take longer than a lease TTL on a busy host.
    this.startedAt = this.ctx.now();
    this.unsubscribe.push(this.ctx.events.onChange((e) => {
      if (e.type === "queued" || e.type === "requeued") this.jobQueued();
      // A requeued job waits out its backoff (not_before); nothing else would wake dispatch then.
      if (e.type === "requeued") void this.dispatchWhenDue(e.jobId);
      if (e.type === "cancel_requested") {
        const minerId = typeof e.data.miner_id === "string" ? e.data.miner_id : undefined;
        const attempt = typeof e.data.attempt === "number" ? e.data.attempt : undefined;
        if (minerId !== undefined && attempt !== undefined) this.tellStop(minerId, e.jobId, attempt, "cancelled");
      }
    }));
    // Changes committed by other replicas arrive as hints (NOTIFY): new work → dispatch here too;
    // a cancel, a reaped lease or an end → the miner holding it, if its session is here, is told.
    this.unsubscribe.push(this.ctx.events.onRemote((c) => void this.remoteChange(c)));
    this.unsubscribe.push(this.ctx.events.onResync(() => this.wake()));
    this.timer = setInterval(() => {
      this.forgetEmpty();
      this.reaping = this.reap().catch((err: unknown) => this.log.error({ err: errorMessage(err) }, "reaper pass failed"));
    }, this.ctx.config.scheduler.reapIntervalMs);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    for (const u of this.unsubscribe.splice(0)) u();
    if (this.timer !== undefined) clearInterval(this.timer);
    for (const t of this.dueTimers) clearTimeout(t);
    this.dueTimers.clear();
    await this.reaping;
  }

  /** Asks for a dispatch run (coalesced). */
  dispatch(): void {
    if (this.dispatching) {
      this.again = true;
      return;
    }
    this.dispatching = true;
    void this.runDispatch()
      .catch((err: unknown) => this.log.error({ err: errorMessage(err) }, "dispatch failed"))
      .finally(() => {
        this.dispatching = false;
        if (this.again) {
          this.again = false;
          this.dispatch();
        }
      });
  }

  /** A job became queued: a dispatch run, which starts wider the more jobs came since the last. */
  private jobQueued(): void {
    this.newlyQueued += 1;
    this.wake();
  }

  /** Something may have become claimable: a dispatch run that claims for every capability again. */
  private wake(): void {
    this.forgetEmpty();
    this.dispatch();
  }

  private forgetEmpty(): void {
    this.queueEpoch += 1;
    this.knownEmpty.clear();
  }

  private async remoteChange(c: RemoteChange): Promise<void> {
    if (c.type === "queued" || c.type === "requeued") this.jobQueued();
    if (c.type === "requeued") await this.dispatchWhenDue(c.jobId);
    const reason = STOP_REASONS[c.type];
    if (reason === undefined) return;
    try {
      const e = (await this.ctx.store.listEvents(c.jobId, c.seq - 1))[0];
      const minerId = typeof e?.data.miner_id === "string" ? e.data.miner_id : undefined;
      const attempt = typeof e?.data.attempt === "number" ? e.data.attempt : undefined;
      if (minerId !== undefined && attempt !== undefined && this.fleet.target(minerId) !== undefined) this.tellStop(minerId, c.jobId, attempt, reason);
    } catch (err) {
      this.log.warn({ err: errorMessage(err), jobId: c.jobId }, "reading a remote change failed");
    }
  }

  /** Asks for a dispatch run once a requeued job's backoff is over. */
  private async dispatchWhenDue(jobId: string): Promise<void> {
    try {
      const job = await this.ctx.store.getJobById(jobId);
      if (job === null || job.status !== "queued") return;
      const waitMs = job.notBefore - this.ctx.now();
      if (waitMs <= 0) return; // the dispatch asked for with the event can already claim it
      const t = setTimeout(() => {
        this.dueTimers.delete(t);
        this.wake();
      }, waitMs + 1);
      t.unref();
      this.dueTimers.add(t);
    } catch (err) {
      this.log.error({ err: errorMessage(err), jobId }, "scheduling a dispatch after backoff failed");
    }
  }

  private async runDispatch(): Promise<void> {
    const { leaseTtlMs } = this.ctx.config.scheduler;
    // Only the sessions that want work, starting after the one served last (round-robin across
    // runs, not only within one: with one job per run the first session listed would get them all).
    const before: DispatchTarget[] = [];
    const after: DispatchTarget[] = [];
    let passedLast = this.lastServed === undefined;
    for (const s of this.fleet.targets()) {
      if (s.wantsWork()) (passedLast ? after : before).push(s);
      if (s.minerId === this.lastServed) passedLast = true;
    }
    const order = passedLast ? [...after, ...before] : before;
    // With no session wanting work the count is kept for the run a pull will start. Read before
    // any await: jobs queued while this run claims count for the next one.
    if (order.length === 0) return;
    const newlyQueued = this.newlyQueued;
    this.newlyQueued = 0;
    // A claim depends only on the miner's models and GPUs: once one session of a capability found
    // nothing, every other one of it would too, so each run asks the store once per capability,
    // not once per session (a fleet of idle miners cost one claim query each per job before), and
    // later runs not at all until something is queued (knownEmpty; bench:fleet: every miner's
    // pull after its result claimed and found nothing, two round trips each).
    const empty = this.knownEmpty;
    let progress = true;
    // Claims of one round go out CLAIM_WIDTH_MAX at a time once the queue proves deep (after two
    // batches that all found what they asked for, each such batch doubles the next; one that fell
    // short starts again at one), and each claim asks for `ask` jobs at most: one in the first
    // round, doubling after every round in which each claim got all it asked for, up to the
    // session's credits. A short queue is spread over the miners one job each and costs one claim
    // (and one that finds nothing); a deep one fills free slots in a claim or two per miner, not a
    // store round trip per job (bench:cluster: PostgreSQL claims of one job each, one after the
    // other, were what bounded its jobs/s).
    // Jobs known to have been queued since the last run set where it starts: N of them go out in
    // one batch of claims (up to CLAIM_WIDTH_MAX sessions asking for N between them), not through
    // the slow start, which costs a round trip per step (five before 32 jobs were out).
    let width = newlyQueued > 1 ? Math.min(CLAIM_WIDTH_MAX, order.length, newlyQueued) : 1;
    let full = width > 1 ? 2 : 0;
    let ask = Math.min(CLAIM_JOBS_MAX, Math.max(1, Math.ceil(newlyQueued / width)));
    // Round-robin: one claim per miner per round, so one fast puller does not take the whole queue.
    while (progress) {
      progress = false;
      let filled = true;
      let i = 0;
      while (i < order.length) {
        const batch: DispatchTarget[] = [];
        while (batch.length < width && i < order.length) {
          const s = order[i++]!;
          if (s.wantsWork() && !empty.has(capabilityKey(s))) batch.push(s);
        }
        if (batch.length === 0) break;
        const now = this.ctx.now();
        const epoch = this.queueEpoch;
        // Both at least 1: `ask` starts there, and a session that wants work has credits.
        const asks = batch.map((s) => Math.min(ask, s.credits));
        const claims = await Promise.allSettled(
          batch.map((s, k) => this.ctx.store.claimJobs({ minerId: s.minerId, gpus: s.gpus, models: s.models }, now, leaseTtlMs, asks[k]!)),
        );
        let failure: Error | undefined;
        let satisfied = 0;
        for (let k = 0; k < batch.length; k++) {
          const s = batch[k]!;
          const c = claims[k]!;
          // The others' leases are offered before a failed claim's error is raised: a lease
          // granted and never offered would wait out its TTL.
          if (c.status === "rejected") {
            failure ??= c.reason instanceof Error ? c.reason : new Error(String(c.reason));
            filled = false;
            continue;
          }
          // Fewer than asked: nothing more of this capability is free to take, until something
          // is queued (unless something was while the claim ran: its look may have missed it).
          if (c.value.length < asks[k]!) {
            if (epoch === this.queueEpoch) empty.add(capabilityKey(s));
            filled = false;
          } else satisfied += 1;
          let handedBack = false;
          for (const a of c.value) {
            if (await this.offer(s, a)) progress = true;
            else handedBack = true;
          }
          // Handed back: others of this capability may take them (they were found for this one).
          if (handedBack) empty.delete(capabilityKey(s));
        }
        if (failure !== undefined) throw failure;
        if (satisfied === batch.length) {
          full += 1;
          if (full >= 2) width = Math.min(CLAIM_WIDTH_MAX, width * 2);
        } else {
          full = 0;
          width = 1;
        }
      }
      if (filled) ask = Math.min(CLAIM_JOBS_MAX, ask * 2);
    }
  }

  /** Sends the assign of a claimed job; a session whose socket is closing hands it back. */
  private async offer(s: DispatchTarget, a: Assignment): Promise<boolean> {
    const frame: AssignFrame = {
      type: "assign",
      job: {
        job_id: a.job.id,
        model: a.job.model,
        prompt: a.job.input,
        parameters: a.job.parameters,
        timeout_seconds: a.job.timeoutSeconds,
      },
      attempt: a.attempt,
      lease_token: a.leaseToken,
      lease_expires_at: new Date(a.leaseExpiresAt).toISOString(),
    };
    if (!s.offer(frame, a.job.parameters.max_new_tokens, this.ctx.now())) {
      // The socket is closing: the session took itself out of dispatch (see MinerSession.offer).
      await this.ctx.store.releaseLease({ jobId: a.job.id, attempt: a.attempt, leaseToken: a.leaseToken }, this.ctx.now());
      return false;
    }
    this.lastServed = s.minerId;
    this.ctx.metrics.timeToAssign.observe((this.ctx.now() - a.job.createdAt) / 1000);
    this.log.info({ jobId: a.job.id, attempt: a.attempt, minerId: s.minerId, waitedMs: this.ctx.now() - a.job.createdAt }, "job assigned");
    return true;
  }

  /** One reaper pass; exposed for tests and for a prompt pass at start. */
  async reap(): Promise<void> {
    const now = this.ctx.now();
    const { leaseTtlMs, queueTtlMs, requeueBackoffMs } = this.ctx.config.scheduler;
    const reaped: ReapedJob[] = [];
    if (now >= this.startedAt + leaseTtlMs) reaped.push(...(await this.ctx.store.reapExpiredLeases(now, requeueBackoffMs)));
    reaped.push(...(await this.ctx.store.timeOutRunning(now)));
    reaped.push(...(await this.ctx.store.expireQueued(now, queueTtlMs)));
    for (const r of reaped) {
      this.log.info({ jobId: r.jobId, attempt: r.attempt, minerId: r.minerId, outcome: r.outcome }, "lease reaped");
      this.ctx.metrics.reaped.inc({ outcome: r.outcome });
      if (r.minerId !== null) this.tellStop(r.minerId, r.jobId, r.attempt, r.outcome === "timed_out" ? "timed_out" : r.outcome === "cancelled" ? "cancelled" : "lease_lost");
    }
    // Requeued jobs wait out their backoff (not_before); nothing else wakes the dispatcher then.
    for (const s of this.fleet.targets()) {
      if (s.wantsWork()) {
        this.dispatch();
        break;
      }
    }
  }

  /** Tells the miner holding (job, attempt) to stop, if it is connected. */
  tellStop(minerId: string, jobId: string, attempt: number, reason: string): void {
    this.fleet.target(minerId)?.stop(jobId, attempt, reason);
  }
}
