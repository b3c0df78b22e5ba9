import type { JobRow } from "../../job-row.js";
import type { ReapedJob } from "../../job-store.js";
import { EXPIRED_IN_QUEUE } from "../../transitions.js";
import { finish } from "../job-writes.js";
import type { PgDb } from "../pg-db.js";

/** Queued past the queue TTL → expired; SKIP LOCKED batches, like the reaper (a claim in flight keeps its row). */
export function expireQueued(db: PgDb, now: number, queueTtlMs: number): Promise<ReapedJob[]> {
  return db.tx(async (c, emit) => {
    const rows = (await c.query<JobRow>("SELECT * FROM jobs WHERE status = 'queued' AND created_at < $1 ORDER BY created_at LIMIT 100 FOR UPDATE SKIP LOCKED", [now - queueTtlMs])).rows;
    for (const r of rows) await finish(c, r, "expired", now, emit, { error: EXPIRED_IN_QUEUE });
    return rows.map((r) => ({ jobId: r.id, attempt: r.attempt, minerId: null, outcome: "expired" as const }));
  });
}
