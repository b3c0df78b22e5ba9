import type pg from "pg";
import { storedResult, type JobRow } from "../job-row.js";
import type { StoredResult } from "../job-store.js";
import { CANCELLED_BY_CLIENT, minerTally, timedOut, type FailDecision, type MinerTally } from "../transitions.js";
import type { PgEmit } from "./pg-db.js";

/** The writes several PostgreSQL verbs make, each inside the caller's transaction on a row it has locked. */

export type TerminalStatus = "completed" | "failed" | "cancelled" | "timed_out" | "expired";

/** The data of an attempt's events, `{attempt, miner_id}`: as SQL over a job row (loggedEvent) and from a row read. */
export const ATTEMPT_DATA = "jsonb_build_object('attempt', attempt, 'miner_id', miner_id)";
export function attemptData(r: { attempt: number; miner_id: string | null }): { attempt: number; miner_id: string | null } {
  return { attempt: r.attempt, miner_id: r.miner_id };
}

/** The job's row, locked until the transaction ends (the fence every lease verb stands behind). */
export async function lockJob(c: pg.PoolClient, jobId: string): Promise<JobRow | undefined> {
  return (await c.query<JobRow>("SELECT * FROM jobs WHERE id = $1 FOR UPDATE", [jobId])).rows[0];
}

export async function finish(
  c: pg.PoolClient,
  r: JobRow,
  status: TerminalStatus,
  now: number,
  emit: PgEmit,
  extra: { error?: { code: string; message: string }; result?: StoredResult } = {},
): Promise<void> {
  await c.query(
    `UPDATE jobs SET status = $1, lease_token = NULL, lease_expires_at = NULL, completed_at = $2,
       progress = CASE WHEN $1 = 'completed' THEN 100 ELSE progress END,
       result = COALESCE($3::jsonb, result), error_code = $4, error_message = $5
     WHERE id = $6`,
    [status, now, extra.result === undefined ? null : JSON.stringify(extra.result), extra.error?.code ?? null, extra.error?.message ?? null, r.id],
  );
  await tally(c, r.miner_id, minerTally({ status }, { now, ...(extra.error === undefined ? {} : { error: extra.error }), ...(extra.result === undefined ? {} : { tokensPerSecond: extra.result.tokensPerSecond }) }));
  await emit({ jobId: r.id, type: status, at: now, data: { ...attemptData(r), ...(extra.error === undefined ? {} : { error: extra.error }) } });
}

export async function requeue(
  c: pg.PoolClient,
  r: JobRow,
  now: number,
  notBefore: number,
  reason: string,
  countsAsFailure: boolean,
  emit: PgEmit,
  message = reason,
): Promise<void> {
  await c.query(
    `UPDATE jobs SET status = 'queued', lease_token = NULL, lease_expires_at = NULL, miner_id = NULL,
       progress = 0, attempt_started_at = NULL, not_before = $1, failures = failures + $2
     WHERE id = $3`,
    [notBefore, countsAsFailure ? 1 : 0, r.id],
  );
  await tally(c, r.miner_id, minerTally({ status: "requeued", countsAsFailure }, { now, error: { code: reason, message } }));
  await emit({ jobId: r.id, type: "requeued", at: now, data: { ...attemptData(r), reason } });
}

/** Adds an attempt's end to its miner's figures (a miner with no row is left alone). */
async function tally(c: pg.PoolClient, minerId: string | null, t: MinerTally | null): Promise<void> {
  if (minerId === null || t === null) return;
  await c.query(
    `UPDATE miners SET jobs_done = jobs_done + $1, jobs_failed = jobs_failed + $2,
       tokens_per_s = COALESCE($3, tokens_per_s), last_error = COALESCE($4::jsonb, last_error) WHERE id = $5`,
    [t.done, t.failed, t.tokensPerSecond, t.lastError === null ? null : JSON.stringify(t.lastError), minerId],
  );
}

/** Writes what transitions.ts decided for a lease that ends (fail or expiry). */
export async function apply(c: pg.PoolClient, r: JobRow, d: FailDecision, now: number, emit: PgEmit): Promise<"requeued" | "failed" | "cancelled" | "timed_out"> {
  switch (d.kind) {
    case "cancelled":
      await finish(c, r, "cancelled", now, emit, { error: CANCELLED_BY_CLIENT });
      return "cancelled";
    case "timed_out":
      await finish(c, r, "timed_out", now, emit, { error: timedOut(r.timeout_seconds) });
      return "timed_out";
    case "requeue":
      await requeue(c, r, now, d.notBefore, d.reason, true, emit, d.message);
      return "requeued";
    case "failed":
      await finish(c, r, "failed", now, emit, { error: d.error });
      return "failed";
  }
}

export async function addUsage(c: pg.PoolClient, tenant: string, fileBytes: number, resultBytes: number): Promise<void> {
  await c.query(
    `INSERT INTO tenant_usage (tenant, file_bytes, result_bytes) VALUES ($1, GREATEST(0, $2::bigint), GREATEST(0, $3::bigint))
     ON CONFLICT (tenant) DO UPDATE SET file_bytes = GREATEST(0, tenant_usage.file_bytes + $2::bigint), result_bytes = GREATEST(0, tenant_usage.result_bytes + $3::bigint)`,
    [tenant, fileBytes, resultBytes],
  );
}

/** Records that a completed job's output is gone; null when there is none. */
export async function markRemoved(c: pg.PoolClient, r: JobRow, reason: "deleted" | "expired", now: number): Promise<{ location: string } | null> {
  const result = r.status === "completed" ? storedResult(r) : null;
  if (result === null || result.removed !== undefined) return null;
  await c.query("UPDATE jobs SET result = $1 WHERE id = $2", [JSON.stringify({ ...result, removed: { reason, at: now } }), r.id]);
  await addUsage(c, r.tenant, 0, -result.bytes);
  return { location: result.location };
}
