import { hash, randomBytes, timingSafeEqual } from "node:crypto";
import { randomId } from "../store/ids.js";
import type { ApiKeyRecord } from "../store/job-store.js";

/**
 * API keys: `aitbc_<ck|mk|ok>_<12-char id>_<32-char secret>` (client, miner, operator). Only the
 * id and the SHA-256 of the secret are stored; the key itself is shown once, at creation. Each
 * kind opens one door: the client API, the miner gateway, or the operator endpoints (/v1/admin,
 * /dashboard).
 */
export type KeyKind = "client" | "miner" | "operator";

export const KEY_KINDS: readonly KeyKind[] = ["client", "miner", "operator"];

const PREFIX: Record<KeyKind, string> = { client: "ck", miner: "mk", operator: "ok" };
const KEY_FORMAT = /^aitbc_(ck|mk|ok)_([a-z0-9]{12})_([A-Za-z0-9_-]{32})$/;

export function hashSecret(secret: string): Buffer {
  // One-shot: every authenticated request hashes its key's secret (crypto.hash is ~40% cheaper than a Hash object).
  return hash("sha256", secret, "buffer");
}

/** A new key: what to store (id, hash) and what to show once (key). */
export function newApiKey(kind: KeyKind): { id: string; key: string; secretHash: Buffer } {
  const id = randomId("", 12);
  const secret = randomBytes(24).toString("base64url");
  return { id, key: `aitbc_${PREFIX[kind]}_${id}_${secret}`, secretHash: hashSecret(secret) };
}

/** The key's id and secret when it is well-formed and of this kind; null otherwise. */
export function parseApiKey(raw: string, kind: KeyKind): { id: string; secret: string } | null {
  const m = KEY_FORMAT.exec(raw);
  if (m === null || m[1] !== PREFIX[kind]) return null;
  return { id: m[2]!, secret: m[3]! };
}

/** The kind a well-formed key says it is (its prefix), or null. */
export function keyKindOf(raw: string): KeyKind | null {
  const m = KEY_FORMAT.exec(raw);
  if (m === null) return null;
  return KEY_KINDS.find((k) => PREFIX[k] === m[1]) ?? null;
}

/** Whether a presented secret matches the stored hash (constant time). */
export function secretMatches(storedHash: Buffer, secret: string): boolean {
  const h = hashSecret(secret);
  return storedHash.length === h.length && timingSafeEqual(storedHash, h);
}

/** For each key row object a store keeps: the secret that matched its hash, and its record. */
const verified = new WeakMap<object, { secret: Buffer; record: ApiKeyRecord }>();

/**
 * The key's record when the presented secret matches the row's hash, else null. A store keeps
 * a key's row between requests (until the database changes); while it does, a secret that
 * matched it once is compared with the presented one directly (constant time, both the format's
 * 32 characters) instead of hashing again, and the same frozen record is returned.
 */
export function verifiedKey(row: { secret_hash: Buffer }, secret: string, record: () => ApiKeyRecord): ApiKeyRecord | null {
  const presented = Buffer.from(secret, "utf8");
  const known = verified.get(row);
  if (known !== undefined && known.secret.length === presented.length && timingSafeEqual(known.secret, presented)) return known.record;
  if (!secretMatches(row.secret_hash, secret)) return null;
  const r = Object.freeze(record());
  verified.set(row, { secret: presented, record: r });
  return r;
}
