import { timingSafeEqual } from "node:crypto";
import type { Logger } from "../../common/logger.js";
import type { AssignFrame, CoordinatorFrame, GpuInfo, GpuLoad } from "../../protocol/frames.js";
import type { DispatchTarget } from "../scheduler/scheduler.js";
import type { ChunkBuffer } from "./result-chunks.js";
import type { MinerLink } from "./miner-link.js";

/** A lease this connection holds, as the gateway remembers it between store writes. */
export interface HeldLease {
  jobId: string;
  attempt: number;
  leaseToken: string;
  /** The job's max_new_tokens: progress is clamped to it. */
  maxTokens: number;
  /** When the store last extended this lease (renewals are coalesced). */
  renewedAt: number;
}

export interface MinerIdentity {
  minerId: string;
  /** The miner key it connected with (revoking it closes the session). */
  keyId: string;
  name: string;
  /** After plausibility clamps (see plausibility.ts). */
  gpus: GpuInfo[];
  models: string[];
  slots: number;
  protocolVersion: number;
  /** This session's number among the miner's sessions (miners table): a newer one fences it out. */
  epoch: number;
}

/**
 * One connected miner after its hello, as the gateway and the scheduler see it.
 *
 * `credits` is the miner's free-slot count: set by each `pull` (never above what its hello's
 * slots leave free after the leases it holds) and lowered by one per `assign`. The scheduler
 * offers jobs only while it is above zero, so a miner never gets more jobs than it declared.
 */
export class MinerSession implements DispatchTarget {
  credits = 0;
  /** Pulls received: a pull applied again later is applied only while it is still the latest. */
  pulls = 0;
  private drainingNow = false;
  private operatorDrainedNow = false;
  /** Its GPUs' load from the latest heartbeat that carried one (protocol 5), for the miners table. */
  gpuLoad: GpuLoad[] | undefined;
  readonly leases = new Map<string, HeldLease>();
  readonly connectedAt = Date.now();
  readonly log: Logger;

  constructor(
    readonly identity: MinerIdentity,
    private readonly link: MinerLink,
    readonly chunks: ChunkBuffer,
    log: Logger,
    /** Told when draining or operatorDrained changes (the gateway's directory version). */
    private readonly changed: () => void = () => undefined,
  ) {
    this.log = log;
  }

  /** The miner said it is draining (a job handed back for a drain or shutdown) until its next pull. */
  get draining(): boolean {
    return this.drainingNow;
  }

  set draining(value: boolean) {
    if (value === this.drainingNow) return;
    this.drainingNow = value;
    this.changed();
  }

  /** An operator drained this miner (the miners table keeps it across reconnects): no new jobs. */
  get operatorDrained(): boolean {
    return this.operatorDrainedNow;
  }

  set operatorDrained(value: boolean) {
    if (value === this.operatorDrainedNow) return;
    this.operatorDrainedNow = value;
    this.changed();
  }

  get minerId(): string {
    return this.identity.minerId;
  }

  get keyId(): string {
    return this.identity.keyId;
  }

  get name(): string {
    return this.identity.name;
  }

  get gpus(): GpuInfo[] {
    return this.identity.gpus;
  }

  get models(): string[] {
    return this.identity.models;
  }

  get slots(): number {
    return this.identity.slots;
  }

  /** Slots not taken by a lease this connection holds. */
  get freeSlots(): number {
    return Math.max(0, this.identity.slots - this.leases.size);
  }

  /** A pull: the miner's count of free slots, bounded by what its hello declared. */
  setCredits(freeSlots: number): void {
    this.credits = Math.min(freeSlots, this.freeSlots);
    this.draining = false;
  }

  wantsWork(): boolean {
    return this.credits > 0 && !this.draining && !this.operatorDrained && this.link.open;
  }

  offer(frame: AssignFrame, maxTokens: number, now: number): boolean {
    if (!this.send(frame)) {
      // The socket is closing; the session stays listed until its "close" event. It takes no
      // more jobs: with its credits kept, the job handed back (queued again at once) would be
      // offered to it again and again in microtasks, and the event loop would never reach that
      // "close" event (the chaos flake: a coordinator at 100% CPU answering nothing).
      this.credits = 0;
      return false;
    }
    this.credits -= 1;
    this.hold({ jobId: frame.job.job_id, attempt: frame.attempt, leaseToken: frame.lease_token, maxTokens, renewedAt: now });
    return true;
  }

  stop(jobId: string, attempt: number, reason: string): void {
    if (!this.send({ type: "cancel", job_id: jobId, attempt, reason })) return;
    // A frame naming a lease it does not hold is the miner's mistake (or a flood): not an info line each.
    if (reason === "lease_lost" && !this.leases.has(leaseKey(jobId, attempt))) this.log.debug({ jobId, attempt, reason }, "told miner to stop");
    else this.log.info({ jobId, attempt, reason }, "told miner to stop");
  }

  hold(lease: HeldLease): void {
    this.leases.set(leaseKey(lease.jobId, lease.attempt), lease);
  }

  /** The lease this connection holds for (job, attempt) when the token is the one it was given. */
  held(jobId: string, attempt: number, leaseToken: string): HeldLease | undefined {
    const l = this.leases.get(leaseKey(jobId, attempt));
    return l !== undefined && safeEqual(l.leaseToken, leaseToken) ? l : undefined;
  }

  drop(jobId: string, attempt: number): void {
    this.leases.delete(leaseKey(jobId, attempt));
  }

  send(frame: CoordinatorFrame): boolean {
    return this.link.send(frame);
  }

  close(code: number, reason: string): void {
    this.link.close(code, reason);
  }
}

export function leaseKey(jobId: string, attempt: number): string {
  return `${jobId}#${attempt}`;
}

function safeEqual(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}
