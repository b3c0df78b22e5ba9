import type { LeaseRef } from "../../job-store.js";
import type { PgDb } from "../pg-db.js";

/** assigned → running, one conditional UPDATE on the whole lease (id, status, attempt, token, miner). */
export function markRunning(db: PgDb, ref: LeaseRef, now: number, leaseTtlMs: number): Promise<boolean> {
  return db.tx(async (c, emit) => {
    const r = await c.query<{ miner_id: string | null }>(
      `UPDATE jobs SET status = 'running', started_at = COALESCE(started_at, $1), attempt_started_at = $1, lease_expires_at = $2
       WHERE id = $3 AND status = 'assigned' AND attempt = $4 AND lease_token = $5 AND ($6::text IS NULL OR miner_id = $6)
       RETURNING miner_id`,
      [now, now + leaseTtlMs, ref.jobId, ref.attempt, ref.leaseToken, ref.minerId ?? null],
    );
    const row = r.rows[0];
    if (row === undefined) return false;
    await emit({ jobId: ref.jobId, type: "running", at: now, data: { attempt: ref.attempt, miner_id: row.miner_id } });
    return true;
  });
}
