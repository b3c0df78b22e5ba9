import type { LeaseRef } from "../../job-store.js";
import { ATTEMPT_DATA, attemptData } from "../job-writes.js";
import { loggedEvent, type PgDb } from "../pg-db.js";

/**
 * assigned → running: one conditional UPDATE on the whole lease (id, status, attempt, token,
 * miner), its event logged and notified in the same statement (PgDb.writeWithEvent).
 */
const MARK_RUNNING = `WITH upd AS (
  UPDATE jobs SET status = 'running', started_at = COALESCE(started_at, $1), attempt_started_at = $1, lease_expires_at = $2, event_seq = event_seq + 1
  WHERE id = $3 AND status = 'assigned' AND attempt = $4 AND lease_token = $5 AND ($6::text IS NULL OR miner_id = $6)
  RETURNING id, event_seq, attempt, miner_id),
${loggedEvent({ type: "running", data: ATTEMPT_DATA, at: "$1", channel: "$7", replica: "$8" })}`;

export async function markRunning(db: PgDb, ref: LeaseRef, now: number, leaseTtlMs: number): Promise<boolean> {
  const row = await db.writeWithEvent<{ id: string; event_seq: number; attempt: number; miner_id: string | null }>(MARK_RUNNING, [now, now + leaseTtlMs, ref.jobId, ref.attempt, ref.leaseToken, ref.minerId ?? null], { type: "running", at: now, data: attemptData });
  return row !== undefined;
}
