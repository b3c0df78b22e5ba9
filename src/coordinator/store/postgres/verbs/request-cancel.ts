import { toJob, type JobRow } from "../../job-row.js";
import type { CancelOutcome } from "../../job-store.js";
import { CANCELLED_BY_CLIENT, decideCancel } from "../../transitions.js";
import { finish, lockJob } from "../job-writes.js";
import type { PgDb } from "../pg-db.js";

/** A client's DELETE: the row locked, then transitions.ts decides; the cancel_requested event reaches the holding replica by NOTIFY. */
export function requestCancel(db: PgDb, tenant: string, jobId: string, now: number): Promise<CancelOutcome | null> {
  return db.tx(async (c, emit): Promise<CancelOutcome | null> => {
    const r = await lockJob(c, jobId);
    if (r === undefined || r.tenant !== tenant) return null;
    switch (decideCancel(r.status)) {
      case "cancel_now":
        await finish(c, r, "cancelled", now, emit, { error: CANCELLED_BY_CLIENT });
        break;
      case "request_stop":
        if (r.cancel_requested !== true) {
          await c.query("UPDATE jobs SET cancel_requested = true WHERE id = $1", [jobId]);
          await emit({ jobId, type: "cancel_requested", at: now, data: { attempt: r.attempt, miner_id: r.miner_id } });
        }
        break;
      case "conflict":
        return { outcome: "conflict", job: toJob(r) };
    }
    const after = toJob((await c.query<JobRow>("SELECT * FROM jobs WHERE id = $1", [jobId])).rows[0]!);
    return { outcome: after.status === "cancelled" ? "cancelled" : "cancel_requested", job: after };
  });
}
