import { createHmac, timingSafeEqual } from "node:crypto";
import type { ApiKeyRecord, JobStore } from "../store/job-store.js";

/**
 * Dashboard sessions: a login exchanges an operator key for a cookie holding
 * `<key id>.<expiry ms>.<HMAC-SHA256 of both, keyed by the key's stored secret hash>`. Nothing is
 * stored per session, so every replica checks a cookie another replica issued; revoking the key
 * ends its sessions at once (the key is looked up on every request), and the key itself never
 * reaches the page.
 */
export const SESSION_COOKIE = "aitbc_session";

function sign(secretHash: Buffer, keyId: string, expires: number): string {
  return createHmac("sha256", secretHash).update(`aitbc-session:${keyId}.${expires}`).digest("base64url");
}

export function issueSession(key: { record: ApiKeyRecord; secretHash: Buffer }, now: number, ttlMs: number): { value: string; expires: number } {
  const expires = now + ttlMs;
  return { value: `${key.record.id}.${expires}.${sign(key.secretHash, key.record.id, expires)}`, expires };
}

/** The operator key a cookie value stands for, while it is unexpired, well signed and the key is not revoked; else null. */
export async function verifySession(store: JobStore, value: string, now: number): Promise<ApiKeyRecord | null> {
  const m = /^([a-z0-9]{12})\.(\d{1,16})\.([A-Za-z0-9_-]{43})$/.exec(value);
  if (m === null) return null;
  const [, keyId, exp, sig] = m as unknown as [string, string, string, string];
  const expires = Number(exp);
  if (!(expires > now)) return null;
  const key = await store.getKey(keyId);
  if (key === null || key.record.kind !== "operator" || key.record.revokedAt !== null) return null;
  const want = Buffer.from(sign(key.secretHash, keyId, expires));
  const got = Buffer.from(sig);
  return want.length === got.length && timingSafeEqual(want, got) ? key.record : null;
}

/** One cookie's value from a Cookie header. */
export function cookieValue(header: string | undefined, name: string): string | undefined {
  if (header === undefined) return undefined;
  for (const part of header.split(";")) {
    const i = part.indexOf("=");
    if (i > 0 && part.slice(0, i).trim() === name) return part.slice(i + 1).trim();
  }
  return undefined;
}
