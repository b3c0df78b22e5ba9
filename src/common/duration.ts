/**
 * Durations and sizes as people write them in config files: "250ms", "10s", "5m", "2h",
 * "1d" and "512KiB", "1MiB", "2GB". A bare number is taken as milliseconds / bytes.
 */
const DURATION_UNITS: Record<string, number> = {
  ms: 1,
  s: 1_000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
};

const SIZE_UNITS: Record<string, number> = {
  b: 1,
  kb: 1_000,
  mb: 1_000_000,
  gb: 1_000_000_000,
  kib: 1024,
  mib: 1024 ** 2,
  gib: 1024 ** 3,
  tb: 1_000_000_000_000,
  tib: 1024 ** 4,
};

export function parseDuration(value: string | number): number {
  if (typeof value === "number") {
    if (!Number.isFinite(value) || value < 0) throw new Error(`invalid duration ${value}`);
    return value;
  }
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$/i.exec(value);
  if (!m) throw new Error(`invalid duration "${value}" (use e.g. "500ms", "10s", "5m", "1h")`);
  const unit = DURATION_UNITS[m[2]!.toLowerCase()]!;
  return Math.round(Number(m[1]) * unit);
}

export function parseSize(value: string | number): number {
  if (typeof value === "number") {
    if (!Number.isInteger(value) || value < 0) throw new Error(`invalid size ${value}`);
    return value;
  }
  const m = /^\s*(\d+(?:\.\d+)?)\s*(b|kb|mb|gb|tb|kib|mib|gib|tib)?\s*$/i.exec(value);
  if (!m) throw new Error(`invalid size "${value}" (use e.g. "512KiB", "1MiB", "2GB")`);
  const unit = SIZE_UNITS[(m[2] ?? "b").toLowerCase()]!;
  return Math.round(Number(m[1]) * unit);
}

export function formatDuration(ms: number): string {
  if (ms % 3_600_000 === 0 && ms > 0) return `${ms / 3_600_000}h`;
  if (ms % 60_000 === 0 && ms > 0) return `${ms / 60_000}m`;
  if (ms % 1_000 === 0 && ms > 0) return `${ms / 1_000}s`;
  return `${ms}ms`;
}
