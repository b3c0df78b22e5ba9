import { newApiKey, parseApiKey, verifiedKey, type KeyKind } from "../../../auth/api-key.js";
import { toKey, type KeyRow } from "../../job-row.js";
import type { ApiKeyRecord } from "../../job-store.js";
import type { PgDb } from "../pg-db.js";
import { CONTROL_CHANNEL } from "./miners.js";

/** API keys: only the id and the secret's hash are stored. */

export async function createKey(db: PgDb, kind: KeyKind, name: string, tenant: string, now: number): Promise<{ record: ApiKeyRecord; key: string }> {
  const k = newApiKey(kind);
  await db.query("INSERT INTO api_keys (id, kind, name, tenant, secret_hash, created_at) VALUES ($1, $2, $3, $4, $5, $6)", [k.id, kind, name, tenant, k.secretHash, now]);
  return { record: { id: k.id, kind, name, tenant, createdAt: now, revokedAt: null }, key: k.key };
}

/** A key's row is kept for a while after it is read (PgDbOptions.keyCacheMs): a request's authentication need not be a round trip. */
export async function authenticate(db: PgDb, rawKey: string, kind: KeyKind): Promise<ApiKeyRecord | null> {
  const parsed = parseApiKey(rawKey, kind);
  if (parsed === null) return null;
  let row = db.cachedKey(parsed.id);
  if (row === undefined) {
    row = (await db.query<KeyRow>("SELECT * FROM api_keys WHERE id = $1", [parsed.id]))[0];
    if (row !== undefined) db.rememberKey(row);
  }
  if (row === undefined || row.kind !== kind || row.revoked_at !== null) return null;
  return verifiedKey(row, parsed.secret, () => toKey(row));
}

export async function listKeys(db: PgDb): Promise<ApiKeyRecord[]> {
  return (await db.query<KeyRow>("SELECT * FROM api_keys ORDER BY created_at, id")).map(toKey);
}

/** Revokes the key and tells every replica (a NOTIFY sent with the commit) to stop trusting the row it may keep. */
export async function revokeKey(db: PgDb, id: string, now: number): Promise<boolean> {
  const revoked = await db.query<{ id: string }>(
    `WITH r AS (UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL RETURNING id)
     SELECT id, pg_notify($3, json_build_object('k', 'revoke', 'id', id)::text) FROM r`,
    [now, id, CONTROL_CHANNEL],
  );
  db.forgetKey(id);
  return revoked.length === 1;
}

export async function revokedAmong(db: PgDb, ids: readonly string[]): Promise<string[]> {
  if (ids.length === 0) return [];
  return (await db.query<{ id: string }>("SELECT id FROM api_keys WHERE revoked_at IS NOT NULL AND id = ANY($1::text[])", [ids])).map((r) => r.id);
}

export async function getKey(db: PgDb, id: string): Promise<{ record: ApiKeyRecord; secretHash: Buffer } | null> {
  const row = (await db.query<KeyRow>("SELECT * FROM api_keys WHERE id = $1", [id]))[0];
  return row === undefined ? null : { record: toKey(row), secretHash: row.secret_hash };
}
