import { storedResult } from "../../job-row.js";
import type { CommitOutcome, LeaseRef, StoredResult } from "../../job-store.js";
import { CANCELLED_BY_CLIENT, decideCommit } from "../../transitions.js";
import { ATTEMPT_DATA, addUsage, attemptData, finish, lockJob } from "../job-writes.js";
import { loggedEvent, type PgDb } from "../pg-db.js";

/**
 * The common case in one statement: the lease is held (status, attempt, token, miner) and no
 * cancel was accepted, which is exactly when decideCommit says "commit"; the row is completed
 * as finish() completes it, the miner tallied (minerTally of a completion), the tenant's usage
 * grown and the event logged, all at once (PgDb.writeWithEvent).
 */
const COMMIT_HELD = `WITH upd AS (
  UPDATE jobs SET status = 'completed', lease_token = NULL, lease_expires_at = NULL, completed_at = $1, progress = 100,
    result = $2::jsonb, error_code = NULL, error_message = NULL, event_seq = event_seq + 1
  WHERE id = $3 AND status IN ('assigned', 'running') AND attempt = $4 AND lease_token = $5 AND ($6::text IS NULL OR miner_id = $6) AND NOT cancel_requested
  RETURNING id, event_seq, attempt, miner_id, tenant, destination),
tallied AS (UPDATE miners SET jobs_done = jobs_done + 1, tokens_per_s = COALESCE($7, tokens_per_s) WHERE id = (SELECT miner_id FROM upd)),
used AS (INSERT INTO tenant_usage (tenant, file_bytes, result_bytes) SELECT tenant, 0, GREATEST(0, $8::bigint) FROM upd
  ON CONFLICT (tenant) DO UPDATE SET result_bytes = GREATEST(0, tenant_usage.result_bytes + $8::bigint)),
${loggedEvent({ type: "completed", data: ATTEMPT_DATA, at: "$1", channel: "$9", replica: "$10" })}`;

/**
 * Compare-and-set of a result on the lease. Held: the one statement above. Otherwise behind the
 * row's lock, as transitions.ts decides: a reaper that requeued the job first has changed the
 * attempt (this result is then stale), and one that comes after sees a completed job; a cancel
 * accepted first wins. Exactly one of them wins.
 */
export async function commitResult(db: PgDb, ref: LeaseRef, result: StoredResult, now: number): Promise<CommitOutcome> {
  const stored = { ...result, attempt: ref.attempt };
  const held = await db.writeWithEvent<{ id: string; event_seq: number; attempt: number; miner_id: string | null; destination: string }>(
    COMMIT_HELD,
    [now, JSON.stringify(stored), ref.jobId, ref.attempt, ref.leaseToken, ref.minerId ?? null, result.tokensPerSecond, result.bytes],
    // The S3 uploader reads only the completions bound for S3.
    { type: "completed", at: now, data: attemptData, destination: (r) => r.destination },
  );
  if (held !== undefined) return "committed";
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
        await finish(c, r, "completed", now, emit, { result: stored });
        await addUsage(c, r.tenant, 0, result.bytes);
        return "committed";
    }
  });
}
