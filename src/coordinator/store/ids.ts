import { randomBytes } from "node:crypto";

const ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789";

/**
 * Random bytes drawn 4 KiB at a time: one getrandom call per id was a twentieth of a grouped
 * submit's time. Each byte is used once.
 */
const pool = { bytes: Buffer.alloc(0), at: 0 };

function poolBytes(n: number): Buffer {
  if (pool.at + n > pool.bytes.length) {
    pool.bytes = randomBytes(Math.max(4096, n));
    pool.at = 0;
  }
  const out = pool.bytes.subarray(pool.at, pool.at + n);
  pool.at += n;
  return out;
}

/** A random id of lower-case letters and digits (≈ 5.2 bits each): `job_…`, `file_…`, key ids. */
export function randomId(prefix: string, length = 16): string {
  const bytes = poolBytes(length);
  let out = "";
  for (const b of bytes) out += ALPHABET[b % ALPHABET.length];
  return `${prefix}${out}`;
}

/** A lease token: 144 random bits, URL-safe. */
export function newLeaseToken(): string {
  return randomBytes(18).toString("base64url");
}
