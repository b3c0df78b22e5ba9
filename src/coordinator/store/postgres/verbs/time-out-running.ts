import type { JobRow } from "../../job-row.js";
import type { ReapedJob } from "../../job-store.js";
import { timedOut } from "../../transitions.js";
import { finish } from "../job-writes.js";
import type { PgDb } from "../pg-db.js";

/** Running attempts past their job's timeout_seconds → timed_out; SKIP LOCKED batches. */
export function timeOutRunning(db: PgDb, now: number): Promise<ReapedJob[]> {
  return db.tx(async (c, emit) => {
    const rows = (
      await c.query<JobRow>(
        "SELECT * FROM jobs WHERE status = 'running' AND attempt_started_at + timeout_seconds * 1000 < $1 LIMIT 100 FOR UPDATE SKIP LOCKED",
        [now],
      )
    ).rows;
    for (const r of rows) await finish(c, r, "timed_out", now, emit, { error: timedOut(r.timeout_seconds) });
    return rows.map((r) => ({ jobId: r.id, attempt: r.attempt, minerId: r.miner_id, outcome: "timed_out" as const }));
  });
}
