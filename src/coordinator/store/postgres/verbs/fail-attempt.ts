import type { FailOutcome, LeaseRef } from "../../job-store.js";
import { decideFail, holdsLease } from "../../transitions.js";
import { apply, lockJob } from "../job-writes.js";
import type { PgDb } from "../pg-db.js";

/** A miner's fail for a lease it holds: the row locked, transitions.ts decides (requeue, failed, or a state only the coordinator may choose). */
export function failAttempt(db: PgDb, ref: LeaseRef, failure: { code: string; message: string; retryable: boolean }, now: number, requeueBackoffMs: number): Promise<FailOutcome> {
  return db.tx(async (c, emit): Promise<FailOutcome> => {
    const r = await lockJob(c, ref.jobId);
    if (r === undefined || !holdsLease(r, ref)) return "stale";
    const d = decideFail(
      { cancelRequested: r.cancel_requested === true, failures: r.failures, maxAttempts: r.max_attempts, assignedAt: r.assigned_at, timeoutSeconds: r.timeout_seconds },
      failure,
      now,
      requeueBackoffMs,
    );
    return apply(c, r, d, now, emit);
  });
}
