import { randomId } from "../ids.js";
import { storedResult, toFile, toJob, type FileRow, type JobRow } from "../job-row.js";
import type { FileRecord, JobRecord, StoredResult, TenantUsage, UploadRecord } from "../job-store.js";
import type { SqliteDb } from "./sqlite-db.js";

/** What is stored besides jobs: uploaded files, the bytes each tenant keeps, results' removal and S3 delivery. */

export function createFile(db: SqliteDb, tenant: string, content: string, upload: { sha256: string; bytes: number }, now: number): FileRecord {
  return db.tx(() => {
    const id = randomId("file_");
    db.sql("INSERT INTO files (id, tenant, bytes, sha256, created_at, content) VALUES (?, ?, ?, ?, ?, ?)").run(id, tenant, upload.bytes, upload.sha256, now, content);
    db.addUsage(tenant, upload.bytes, 0);
    return { id, tenant, bytes: upload.bytes, sha256: upload.sha256, createdAt: now, content };
  });
}

export function getFile(db: SqliteDb, tenant: string, fileId: string): FileRecord | null {
  const r = db.read(() => db.sql("SELECT * FROM files WHERE id = ? AND tenant = ?").get(fileId, tenant) as FileRow | undefined);
  return r === undefined ? null : toFile(r);
}

export function deleteFile(db: SqliteDb, tenant: string, fileId: string): boolean {
  return db.tx(() => {
    const r = db.sql("DELETE FROM files WHERE id = ? AND tenant = ? RETURNING bytes").get(fileId, tenant) as { bytes: number } | undefined;
    if (r === undefined) return false;
    db.addUsage(tenant, -r.bytes, 0);
    return true;
  });
}

export function usage(db: SqliteDb, tenant: string): TenantUsage {
  const r = db.read(() => db.sql("SELECT file_bytes, result_bytes FROM tenant_usage WHERE tenant = ?").get(tenant) as { file_bytes: number; result_bytes: number } | undefined);
  return { fileBytes: r?.file_bytes ?? 0, resultBytes: r?.result_bytes ?? 0 };
}

export function removeResult(db: SqliteDb, tenant: string, jobId: string, reason: "deleted", now: number): { location: string } | null {
  return db.tx(() => {
    const r = db.row(jobId);
    if (r === undefined || r.tenant !== tenant) return null;
    return db.markRemoved(r, reason, now);
  });
}

export function expireResults(db: SqliteDb, before: number, now: number, limit: number): { jobId: string; location: string }[] {
  return db.tx(() => {
    const rows = db
      .sql(
        `SELECT * FROM jobs WHERE status = 'completed' AND completed_at < ? AND result IS NOT NULL
           AND json_extract(result, '$.removed') IS NULL ORDER BY completed_at LIMIT ?`,
      )
      .all(before, limit) as JobRow[];
    const out: { jobId: string; location: string }[] = [];
    for (const r of rows) {
      const removed = db.markRemoved(r, "expired", now);
      if (removed !== null) out.push({ jobId: r.id, location: removed.location });
    }
    return out;
  });
}

export function expireFiles(db: SqliteDb, before: number, limit: number): number {
  return db.tx(() => {
    const rows = db
      .sql("DELETE FROM files WHERE id IN (SELECT id FROM files WHERE created_at < ? ORDER BY created_at LIMIT ?) RETURNING tenant, bytes")
      .all(before, limit) as { tenant: string; bytes: number }[];
    for (const r of rows) db.addUsage(r.tenant, -r.bytes, 0);
    return rows.length;
  });
}

export function recordUpload(
  db: SqliteDb,
  jobId: string,
  outcome: { uri: string; attempts: number } | { error: { code: string; message: string }; attempts: number },
  now: number,
): boolean {
  return db.tx((emit): boolean => {
    const r = db.row(jobId);
    const current = r?.status === "completed" ? storedResult(r) : null;
    if (r === undefined || current === null) return false;
    const upload: UploadRecord =
      "uri" in outcome ? { state: "uploaded", uri: outcome.uri, attempts: outcome.attempts, at: now } : { state: "failed", error: outcome.error, attempts: outcome.attempts, at: now };
    const result: StoredResult = { ...current, upload };
    db.sql("UPDATE jobs SET result = ? WHERE id = ?").run(JSON.stringify(result), jobId);
    emit({
      jobId,
      type: upload.state === "uploaded" ? "uploaded" : "upload_failed",
      at: now,
      data: upload.state === "uploaded" ? { uri: upload.uri, attempts: upload.attempts } : { error: upload.error, attempts: upload.attempts },
    });
    return true;
  });
}

export function listPendingUploads(db: SqliteDb, limit: number): JobRecord[] {
  return db.read(() =>
    (
      db
        .sql(
          `SELECT * FROM jobs WHERE status = 'completed' AND destination LIKE 's3://%' AND result IS NOT NULL
             AND COALESCE(json_extract(result, '$.upload.state'), '') <> 'uploaded' AND json_extract(result, '$.removed') IS NULL
           ORDER BY completed_at, id LIMIT ?`,
        )
        .all(limit) as JobRow[]
    ).map(toJob),
  );
}
