import type { LeaseRef } from "../../job-store.js";
import type { PgDb } from "../pg-db.js";

/**
 * Extends the lease, and records progress, only while the triple holds it: one conditional
 * UPDATE. Committed asynchronously (synchronous_commit off): a renewal lost in a crash is made
 * again by the next frame, and the gateway already coalesces them to a few per TTL.
 */
export function renewLease(db: PgDb, ref: LeaseRef, now: number, leaseTtlMs: number, progress?: number): Promise<{ renewed: boolean; cancelRequested: boolean }> {
  return db.tx(
    async (c) => {
      const r = await c.query<{ cancel_requested: boolean }>(
        `UPDATE jobs SET lease_expires_at = GREATEST(COALESCE(lease_expires_at, 0), $1), progress = COALESCE($2, progress)
         WHERE id = $3 AND status IN ('assigned', 'running') AND attempt = $4 AND lease_token = $5 AND ($6::text IS NULL OR miner_id = $6)
         RETURNING cancel_requested`,
        [now + leaseTtlMs, progress === undefined ? null : Math.max(0, Math.min(100, progress)), ref.jobId, ref.attempt, ref.leaseToken, ref.minerId ?? null],
      );
      const row = r.rows[0];
      return row === undefined ? { renewed: false, cancelRequested: false } : { renewed: true, cancelRequested: row.cancel_requested };
    },
    { asyncCommit: true },
  );
}
