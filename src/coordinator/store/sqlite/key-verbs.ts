import { newApiKey, parseApiKey, verifiedKey, type KeyKind } from "../../auth/api-key.js";
import { toKey, type KeyRow } from "../job-row.js";
import type { ApiKeyRecord } from "../job-store.js";
import type { SqliteDb } from "./sqlite-db.js";

/** API keys: created with their hash only, checked in constant time, revoked by a timestamp. */

export function createKey(db: SqliteDb, kind: KeyKind, name: string, tenant: string, now: number): { record: ApiKeyRecord; key: string } {
  return db.tx(() => {
    const k = newApiKey(kind);
    db.sql("INSERT INTO api_keys (id, kind, name, tenant, secret_hash, created_at) VALUES (?, ?, ?, ?, ?, ?)").run(k.id, kind, name, tenant, k.secretHash, now);
    return { record: { id: k.id, kind, name, tenant, createdAt: now, revokedAt: null }, key: k.key };
  });
}

export function authenticate(db: SqliteDb, rawKey: string, kind: KeyKind): ApiKeyRecord | null {
  const parsed = parseApiKey(rawKey, kind);
  if (parsed === null) return null;
  // Every request reads its key: kept until the database changes (a revocation by `aitbc keys
  // revoke` is another process's commit, seen from the next event-loop turn on).
  const row = db.cachedRead(`key ${parsed.id}`, () => db.sql("SELECT * FROM api_keys WHERE id = ?").get(parsed.id) as KeyRow | undefined);
  if (row === undefined || row.kind !== kind || row.revoked_at !== null) return null;
  return verifiedKey(row, parsed.secret, () => toKey(row));
}

export function listKeys(db: SqliteDb): ApiKeyRecord[] {
  return db.read(() => (db.sql("SELECT * FROM api_keys ORDER BY created_at, id").all() as KeyRow[]).map(toKey));
}

export function revokeKey(db: SqliteDb, id: string, now: number): boolean {
  return db.tx(() => db.sql("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL").run(now, id).changes === 1);
}

export function revokedAmong(db: SqliteDb, ids: readonly string[]): string[] {
  const out: string[] = [];
  // In slices: SQLite caps the number of bound parameters.
  for (let i = 0; i < ids.length; i += 500) {
    const slice = ids.slice(i, i + 500);
    const rows = db.read(() => db.db.prepare(`SELECT id FROM api_keys WHERE revoked_at IS NOT NULL AND id IN (${slice.map(() => "?").join(",")})`).all(...slice) as { id: string }[]);
    out.push(...rows.map((r) => r.id));
  }
  return out;
}

export function getKey(db: SqliteDb, id: string): { record: ApiKeyRecord; secretHash: Buffer } | null {
  const row = db.read(() => db.sql("SELECT * FROM api_keys WHERE id = ?").get(id) as KeyRow | undefined);
  return row === undefined ? null : { record: toKey(row), secretHash: row.secret_hash };
}
