import { storedResult } from "../../job-row.js";
import type { CommitOutcome, LeaseRef, StoredResult } from "../../job-store.js";
import { CANCELLED_BY_CLIENT, decideCommit } from "../../transitions.js";
import { addUsage, finish, lockJob } from "../job-writes.js";
import type { PgDb } from "../pg-db.js";

/**
 * Compare-and-set of a result on the lease, behind the row's lock: a reaper that requeued the
 * job first has changed the attempt (this result is then stale), and one that comes after sees
 * a completed job. Exactly one of them wins.
 */
export function commitResult(db: PgDb, ref: LeaseRef, result: StoredResult, now: number): Promise<CommitOutcome> {
  return db.tx(async (c, emit): Promise<CommitOutcome> => {
    const r = await lockJob(c, ref.jobId);
    if (r === undefined) return "stale";
    switch (decideCommit({ ...r, cancelRequested: r.cancel_requested === true, committed: storedResult(r) }, ref, result.sha256)) {
      case "duplicate":
        return "duplicate";
      case "stale":
        return "stale";
      case "cancel":
        await finish(c, r, "cancelled", now, emit, { error: CANCELLED_BY_CLIENT });
        return "stale";
      case "commit":
        await finish(c, r, "completed", now, emit, { result: { ...result, attempt: ref.attempt } });
        await addUsage(c, r.tenant, 0, result.bytes);
        return "committed";
    }
  });
}
