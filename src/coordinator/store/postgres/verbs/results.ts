import { storedResult, toJob, type JobRow } from "../../job-row.js";
import type { JobRecord, StoredResult, TenantUsage, UploadRecord } from "../../job-store.js";
import { lockJob, markRemoved } from "../job-writes.js";
import type { PgDb } from "../pg-db.js";

/** Stored results: usage, removal (owner or retention), S3 delivery records and the re-drive's claim. */

export async function usage(db: PgDb, tenant: string): Promise<TenantUsage> {
  const r = (await db.query<{ file_bytes: number; result_bytes: number }>("SELECT file_bytes, result_bytes FROM tenant_usage WHERE tenant = $1", [tenant]))[0];
  return { fileBytes: r?.file_bytes ?? 0, resultBytes: r?.result_bytes ?? 0 };
}

export function removeResult(db: PgDb, tenant: string, jobId: string, reason: "deleted", now: number): Promise<{ location: string } | null> {
  return db.tx(async (c) => {
    const r = await lockJob(c, jobId);
    if (r === undefined || r.tenant !== tenant) return null;
    return markRemoved(c, r, reason, now);
  });
}

export function expireResults(db: PgDb, before: number, now: number, limit: number): Promise<{ jobId: string; location: string }[]> {
  return db.tx(async (c) => {
    const rows = (
      await c.query<JobRow>(
        `SELECT * FROM jobs WHERE status = 'completed' AND completed_at < $1 AND result IS NOT NULL AND NOT (result ? 'removed')
         ORDER BY completed_at LIMIT $2 FOR UPDATE SKIP LOCKED`,
        [before, limit],
      )
    ).rows;
    const out: { jobId: string; location: string }[] = [];
    for (const r of rows) {
      const removed = await markRemoved(c, r, "expired", now);
      if (removed !== null) out.push({ jobId: r.id, location: removed.location });
    }
    return out;
  });
}

export function recordUpload(
  db: PgDb,
  jobId: string,
  outcome: { uri: string; attempts: number } | { error: { code: string; message: string }; attempts: number },
  now: number,
): Promise<boolean> {
  return db.tx(async (c, emit) => {
    const r = await lockJob(c, jobId);
    const current = r?.status === "completed" ? storedResult(r) : null;
    if (r === undefined || current === null) return false;
    const upload: UploadRecord =
      "uri" in outcome ? { state: "uploaded", uri: outcome.uri, attempts: outcome.attempts, at: now } : { state: "failed", error: outcome.error, attempts: outcome.attempts, at: now };
    const result: StoredResult = { ...current, upload };
    await c.query("UPDATE jobs SET result = $1, upload_claimed_until = NULL WHERE id = $2", [JSON.stringify(result), jobId]);
    await emit({
      jobId,
      type: upload.state === "uploaded" ? "uploaded" : "upload_failed",
      at: now,
      data: upload.state === "uploaded" ? { uri: upload.uri, attempts: upload.attempts } : { error: upload.error, attempts: upload.attempts },
    });
    return true;
  });
}

const PENDING = `status = 'completed' AND destination LIKE 's3://%' AND result IS NOT NULL
  AND COALESCE(result #>> '{upload,state}', '') <> 'uploaded' AND NOT (result ? 'removed')`;

export async function listPendingUploads(db: PgDb, limit: number): Promise<JobRecord[]> {
  return (await db.query<JobRow>(`SELECT * FROM jobs WHERE ${PENDING} ORDER BY completed_at, id LIMIT $1`, [limit])).map(toJob);
}

/**
 * The re-drive's share of pending uploads: up to `limit` not claimed by another replica (or whose
 * claim ran out), claimed until now + claimMs. Replicas re-driving at once take different jobs.
 */
export async function claimPendingUploads(db: PgDb, now: number, claimMs: number, limit: number): Promise<JobRecord[]> {
  return db.tx(async (c) =>
    (
      await c.query<JobRow>(
        `UPDATE jobs SET upload_claimed_until = $1 WHERE id IN (
           SELECT id FROM jobs WHERE ${PENDING} AND COALESCE(upload_claimed_until, 0) < $2
           ORDER BY completed_at LIMIT $3 FOR UPDATE SKIP LOCKED)
         RETURNING *`,
        [now + claimMs, now, limit],
      )
    ).rows.map(toJob),
  );
}
