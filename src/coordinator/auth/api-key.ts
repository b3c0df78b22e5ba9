import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { randomId } from "../store/ids.js";

/**
 * API keys: `aitbc_<ck|mk|ok>_<12-char id>_<32-char secret>` (client, miner, …). Only the id and
 * the SHA-256 of the secret are stored; the key itself is shown once, at creation.
 */
export type KeyKind = "client" | "miner";

const PREFIX: Record<KeyKind, string> = { client: "ck", miner: "mk" };
const KEY_FORMAT = /^aitbc_(ck|mk)_([a-z0-9]{12})_([A-Za-z0-9_-]{32})$/;

export function hashSecret(secret: string): Buffer {
  return createHash("sha256").update(secret).digest();
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

/** Whether a presented secret matches the stored hash (constant time). */
export function secretMatches(storedHash: Buffer, secret: string): boolean {
  const h = hashSecret(secret);
  return storedHash.length === h.length && timingSafeEqual(storedHash, h);
}
