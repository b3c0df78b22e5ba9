import { safeEqual } from "../../common/safe-equal.js";

/**
 * The rules of the job lifecycle that do not depend on how jobs are stored: every backend calls
 * these and only writes down what they decide (job-store.ts draws the state machine).
 */

/** Longest wait before a requeued job may run again, however often it failed. */
export const MAX_REQUEUE_BACKOFF_MS = 5 * 60_000;

/**
 * Delay before a job that failed `failures` times (before this one) may be assigned again:
 * backoff × 2^failures, capped at MAX_REQUEUE_BACKOFF_MS. With the default 1 s: 1 s, 2 s, 4 s, …
 */
export function requeueDelayMs(failures: number, backoffMs: number): number {
  return Math.min(MAX_REQUEUE_BACKOFF_MS, backoffMs * 2 ** Math.min(failures, 30));
}

/**
 * Fail codes that name a state only the coordinator decides: a job ends `cancelled` because a
 * client asked, `timed_out` because its deadline passed, never because a miner says so.
 */
const COORDINATOR_DECIDED = new Set(["cancelled", "timed_out", "expired", "lease_expired", "attempts_exhausted"]);

export interface FailFacts {
  cancelRequested: boolean;
  failures: number;
  maxAttempts: number;
  /** When the lease of this attempt was granted; the miner's own timer starts later, at the assign it receives. */
  assignedAt: number | null;
  timeoutSeconds: number;
}

export type FailDecision =
  | { kind: "cancelled" }
  | { kind: "timed_out" }
  | { kind: "requeue"; notBefore: number; reason: string; message: string }
  | { kind: "failed"; error: { code: string; message: string } };

/**
 * What a miner's `fail {code, message, retryable}` for a lease it holds does:
 * - a cancel was requested → cancelled (whatever the code);
 * - code "timed_out" once the attempt's deadline (assigned_at + timeout_seconds) has passed → timed_out;
 * - any other use of a coordinator-decided code is an ordinary failure recorded as
 *   `miner_claimed_<code>` (a miner cannot end a job cancelled or timed out on its own word);
 * - retryable with attempts left → requeued after the backoff; else failed.
 */
export function decideFail(job: FailFacts, failure: { code: string; message: string; retryable: boolean }, now: number, backoffMs: number): FailDecision {
  if (job.cancelRequested) return { kind: "cancelled" };
  if (failure.code === "timed_out" && job.assignedAt !== null && now >= job.assignedAt + job.timeoutSeconds * 1000) {
    return { kind: "timed_out" };
  }
  const error = COORDINATOR_DECIDED.has(failure.code)
    ? {
        code: `miner_claimed_${failure.code}`,
        message: `the miner reported ${failure.code} although ${failure.code === "timed_out" ? "the job's deadline had not passed" : "the coordinator did not decide it"}: ${failure.message}`,
      }
    : { code: failure.code, message: failure.message };
  if (failure.retryable && job.failures + 1 < job.maxAttempts) {
    return { kind: "requeue", notBefore: now + requeueDelayMs(job.failures, backoffMs), reason: error.code, message: error.message };
  }
  return { kind: "failed", error };
}

/** What an expired lease does: cancelled when asked, else requeued while attempts are left, else failed. */
export function decideExpiry(job: Pick<FailFacts, "cancelRequested" | "failures" | "maxAttempts">, now: number, backoffMs: number): FailDecision {
  if (job.cancelRequested) return { kind: "cancelled" };
  if (job.failures + 1 < job.maxAttempts) {
    return { kind: "requeue", notBefore: now + requeueDelayMs(job.failures, backoffMs), reason: "lease_expired", message: LEASE_EXPIRED_MESSAGE };
  }
  return { kind: "failed", error: { code: "attempts_exhausted", message: `the lease expired on the last of ${job.maxAttempts} attempts` } };
}

const LEASE_EXPIRED_MESSAGE = "the lease expired before the miner renewed it";

/**
 * What an attempt's end adds to its miner's figures in the miners table (the operator's fleet
 * view): a result is one done; a failure that counts against the job (a failed attempt, a lost
 * lease, a timeout) is one failed and its latest error; a cancel or a hand-back is neither.
 */
export interface MinerTally {
  done: 0 | 1;
  failed: 0 | 1;
  tokensPerSecond: number | null;
  lastError: { code: string; message: string; at: number } | null;
}

export function minerTally(
  end: { status: "completed" | "failed" | "cancelled" | "timed_out" | "expired" | "requeued"; countsAsFailure?: boolean },
  facts: { now: number; error?: { code: string; message: string }; tokensPerSecond?: number },
): MinerTally | null {
  if (end.status === "completed") return { done: 1, failed: 0, tokensPerSecond: facts.tokensPerSecond ?? null, lastError: null };
  const failed = end.status === "failed" || end.status === "timed_out" || (end.status === "requeued" && end.countsAsFailure === true);
  if (!failed) return null;
  const error = facts.error ?? { code: end.status, message: end.status };
  return { done: 0, failed: 1, tokensPerSecond: null, lastError: { ...error, at: facts.now } };
}

/** The errors terminal states carry, the same whichever backend writes them. */
export const CANCELLED_BY_CLIENT = { code: "cancelled", message: "cancelled by the client" } as const;
export const EXPIRED_IN_QUEUE = { code: "expired", message: "no miner could run the job before the queue TTL ran out" } as const;
export function timedOut(timeoutSeconds: number): { code: string; message: string } {
  return { code: "timed_out", message: `ran past timeout_seconds (${timeoutSeconds})` };
}

/** The fencing rule: a (job, attempt, token[, miner]) triple holds the lease only if it is the current one. */
export function holdsLease(
  job: { status: string; attempt: number; lease_token: string | null; miner_id: string | null },
  ref: { attempt: number; leaseToken: string; minerId?: string },
): boolean {
  return (
    (job.status === "assigned" || job.status === "running") &&
    job.attempt === ref.attempt &&
    job.lease_token !== null &&
    safeEqual(job.lease_token, ref.leaseToken) &&
    (ref.minerId === undefined || job.miner_id === ref.minerId)
  );
}

/** What a client's DELETE does: a queued job ends at once; a leased one is asked to stop; a finished one conflicts. */
export function decideCancel(status: string): "cancel_now" | "request_stop" | "conflict" {
  if (status === "queued") return "cancel_now";
  if (status === "assigned" || status === "running") return "request_stop";
  return "conflict";
}

/**
 * What a result does (compare-and-set on the lease): the same output of the committed attempt is
 * a duplicate; a lease no longer held is stale; a cancel already accepted (202) wins over a result
 * that arrives before the miner stopped, so a job never completes behind an accepted cancel.
 */
export function decideCommit(
  job: { status: string; attempt: number; lease_token: string | null; miner_id: string | null; cancelRequested: boolean; committed: { attempt: number; sha256: string } | null },
  ref: { attempt: number; leaseToken: string; minerId?: string },
  sha256: string,
): "duplicate" | "stale" | "cancel" | "commit" {
  if (job.status === "completed") return job.committed?.attempt === ref.attempt && job.committed.sha256 === sha256 ? "duplicate" : "stale";
  if (!holdsLease(job, ref)) return "stale";
  return job.cancelRequested ? "cancel" : "commit";
}
