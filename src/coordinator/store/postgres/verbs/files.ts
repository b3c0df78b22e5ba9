import { randomId } from "../../ids.js";
import { toFile, type FileRow } from "../../job-row.js";
import type { FileRecord } from "../../job-store.js";
import { addUsage } from "../job-writes.js";
import type { PgDb } from "../pg-db.js";

/** Uploaded files: stored with the tenant's usage in one transaction. */

export function createFile(db: PgDb, tenant: string, content: string, upload: { sha256: string; bytes: number }, now: number): Promise<FileRecord> {
  return db.tx(async (c) => {
    const id = randomId("file_");
    await c.query("INSERT INTO files (id, tenant, bytes, sha256, created_at, content) VALUES ($1, $2, $3, $4, $5, $6)", [id, tenant, upload.bytes, upload.sha256, now, content]);
    await addUsage(c, tenant, upload.bytes, 0);
    return { id, tenant, bytes: upload.bytes, sha256: upload.sha256, createdAt: now, content };
  });
}

export async function getFile(db: PgDb, tenant: string, fileId: string): Promise<FileRecord | null> {
  const r = (await db.query<FileRow>("SELECT * FROM files WHERE id = $1 AND tenant = $2", [fileId, tenant]))[0];
  return r === undefined ? null : toFile(r);
}

export function deleteFile(db: PgDb, tenant: string, fileId: string): Promise<boolean> {
  return db.tx(async (c) => {
    const r = (await c.query<{ bytes: number }>("DELETE FROM files WHERE id = $1 AND tenant = $2 RETURNING bytes", [fileId, tenant])).rows[0];
    if (r === undefined) return false;
    await addUsage(c, tenant, -r.bytes, 0);
    return true;
  });
}

export function expireFiles(db: PgDb, before: number, limit: number): Promise<number> {
  return db.tx(async (c) => {
    const rows = (
      await c.query<{ tenant: string; bytes: number }>(
        "DELETE FROM files WHERE id IN (SELECT id FROM files WHERE created_at < $1 ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED) RETURNING tenant, bytes",
        [before, limit],
      )
    ).rows;
    for (const r of rows) await addUsage(c, r.tenant, -r.bytes, 0);
    return rows.length;
  });
}
