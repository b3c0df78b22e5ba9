import { randomBytes } from "node:crypto";

const ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789";

/** A random id of lower-case letters and digits (≈ 5.2 bits each): `job_…`, `file_…`, key ids. */
export function randomId(prefix: string, length = 16): string {
  const bytes = randomBytes(length);
  let out = "";
  for (const b of bytes) out += ALPHABET[b % ALPHABET.length];
  return `${prefix}${out}`;
}

/** A lease token: 144 random bits, URL-safe. */
export function newLeaseToken(): string {
  return randomBytes(18).toString("base64url");
}
