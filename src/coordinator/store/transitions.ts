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
  | { kind: "requeue"; notBefore: number; reason: string }
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
    return { kind: "requeue", notBefore: now + requeueDelayMs(job.failures, backoffMs), reason: error.code };
  }
  return { kind: "failed", error };
}

/** What an expired lease does: cancelled when asked, else requeued while attempts are left, else failed. */
export function decideExpiry(job: Pick<FailFacts, "cancelRequested" | "failures" | "maxAttempts">, now: number, backoffMs: number): FailDecision {
  if (job.cancelRequested) return { kind: "cancelled" };
  if (job.failures + 1 < job.maxAttempts) return { kind: "requeue", notBefore: now + requeueDelayMs(job.failures, backoffMs), reason: "lease_expired" };
  return { kind: "failed", error: { code: "attempts_exhausted", message: `the lease expired on the last of ${job.maxAttempts} attempts` } };
}
