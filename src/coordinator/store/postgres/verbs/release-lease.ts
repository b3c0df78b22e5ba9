import type { LeaseRef } from "../../job-store.js";
import { CANCELLED_BY_CLIENT, holdsLease } from "../../transitions.js";
import { finish, lockJob, requeue } from "../job-writes.js";
import type { PgDb } from "../pg-db.js";

/** A job handed back unfinished: requeued at once without burning the attempt budget (cancelled when a cancel was asked). */
export function releaseLease(db: PgDb, ref: LeaseRef, now: number, reason: string): Promise<"requeued" | "cancelled" | "stale"> {
  return db.tx(async (c, emit) => {
    const r = await lockJob(c, ref.jobId);
    if (r === undefined || !holdsLease(r, ref)) return "stale";
    if (r.cancel_requested === true) {
      await finish(c, r, "cancelled", now, emit, { error: CANCELLED_BY_CLIENT });
      return "cancelled";
    }
    await requeue(c, r, now, now, reason, false, emit);
    return "requeued";
  });
}
