import type { JobRow } from "../../job-row.js";
import type { ReapedJob } from "../../job-store.js";
import { decideExpiry } from "../../transitions.js";
import { apply } from "../job-writes.js";
import type { PgDb } from "../pg-db.js";

const REAP_BATCH = 100;

/**
 * Expired leases, a batch at a time, locked with SKIP LOCKED: every replica runs it, and two at
 * once never take the same row (a row another has locked is skipped; once it commits the lease
 * is no longer expired). So a job is requeued exactly once per lost lease.
 */
export function reapExpiredLeases(db: PgDb, now: number, requeueBackoffMs: number): Promise<ReapedJob[]> {
  return db.tx(async (c, emit) => {
    const rows = (
      await c.query<JobRow>(
        `SELECT * FROM jobs WHERE status IN ('assigned', 'running') AND lease_expires_at < $1
         ORDER BY lease_expires_at LIMIT ${REAP_BATCH} FOR UPDATE SKIP LOCKED`,
        [now],
      )
    ).rows;
    const out: ReapedJob[] = [];
    for (const r of rows) {
      const d = decideExpiry({ cancelRequested: r.cancel_requested === true, failures: r.failures, maxAttempts: r.max_attempts }, now, requeueBackoffMs);
      out.push({ jobId: r.id, attempt: r.attempt, minerId: r.miner_id, outcome: await apply(c, r, d, now, emit) });
    }
    return out;
  });
}
