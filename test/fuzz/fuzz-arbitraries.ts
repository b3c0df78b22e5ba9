import fc from "fast-check";

/**
 * Shared fast-check arbitraries for the coordinator fuzzers: the hostile strings, numbers and
 * JSON a client (or a miner) could send.
 */

/** Unicode edge cases: lone surrogates (JSON.stringify writes them as `\ud800` escapes), RTL and zero-width marks, emoji sequences, NUL, line separators. */
export const UNICODE_PIECES = [
  "\ud800",
  "\udc00",
  "\udbff\udfff",
  "\u202e",
  "\u200f",
  "\u200b",
  "\u200d",
  "\ufeff",
  "\u0000",
  "\u2028",
  "\u0301",
  "👩‍👩‍👧‍👦",
  "🏳️‍🌈",
  "𝔘",
  "ﷺ",
  "ü",
  "a",
  " ",
  "\n",
  "\\",
  '"',
  "%",
] as const;

export const unicodeString = fc.array(fc.constantFrom(...UNICODE_PIECES), { minLength: 1, maxLength: 24 }).map((a) => a.join(""));

/** Long strings around the limits (input max 131072, model 128, destination 1024, idempotency key 255). */
export const longString = fc
  .tuple(fc.constantFrom(129, 256, 1025, 4096, 131_072, 131_073, 140_000), fc.constantFrom("x", "é", "😀", "\u200b"))
  .map(([n, c]) => c.repeat(Math.ceil(n / c.length)));

export const weirdNumber = fc.oneof(
  fc.constantFrom(0, -0, -1, 1.5, 1e308, -1e308, 1e-300, 2 ** 31, 2 ** 31 - 1, 2 ** 53 + 1, Number.MAX_SAFE_INTEGER, -Number.MAX_SAFE_INTEGER),
  fc.integer({ min: -1_000_000, max: 1_000_000 }),
  fc.double({ noNaN: false }),
);

/** Strings a lax parser might read as numbers or booleans. */
export const numberLikeString = fc.constantFrom("NaN", "Infinity", "-Infinity", "1e309", "0x10", "1_000", " 1", "", "-0", "true", "null", "1.0", "１");

/** Any mistyped value for a field. */
export const weirdValue: fc.Arbitrary<unknown> = fc.oneof(
  { weight: 3, arbitrary: fc.jsonValue({ maxDepth: 3 }) },
  { weight: 2, arbitrary: weirdNumber },
  { weight: 2, arbitrary: numberLikeString },
  { weight: 2, arbitrary: unicodeString },
  { weight: 1, arbitrary: longString },
  { weight: 1, arbitrary: fc.constant(null) },
);

/** `output_config.destination` with path tricks behind allowed and other buckets. */
export const destination = fc.oneof(
  fc
    .tuple(
      fc.constantFrom("s3://acme-out/", "s3://acme-out", "s3://other-bucket/", "s3://ACME-OUT/", "S3://acme-out/", "s3:///", "s3://acme-out//", "file:///etc/", "local/", "http://acme-out/"),
      fc.array(fc.constantFrom("..", "%2e%2e", "%2E%2E", ".", "", "a", "b/c", "\\", "..\\..", "\u0000", "%00", "//", "\u202e", "~", "a b", "é", "\ud800"), { maxLength: 6 }),
    )
    .map(([p, segs]) => p + segs.join("/")),
  fc.constantFrom("local", "", "s3://acme-out/ok/prefix"),
  weirdValue,
);

/** Bytes of a percent-encoded UTF-8 string (encodeURIComponent throws on lone surrogates). */
export function pctEncode(s: string): string {
  return [...Buffer.from(s, "utf8")].map((b) => `%${b.toString(16).padStart(2, "0").toUpperCase()}`).join("");
}

/** Printable ASCII as a path or query character; the rest percent-encoded (node:http refuses raw spaces and controls). */
export function pathSafe(s: string): string {
  return [...s].map((c) => (/^[\x21-\x7e]$/.test(c) ? c : pctEncode(c))).join("");
}
