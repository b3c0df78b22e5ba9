import type { PgDb } from "../store/postgres/pg-db.js";
import type { RateDecision, RateLimiter, RateWindow } from "./rate-limiter.js";

/**
 * Rate limits shared by every replica: one call of the `aitbc_rate_take` function per request,
 * over an UNLOGGED table of fixed, epoch-aligned windows (no WAL, so no fsync per request; a
 * database crash forgets the current windows). Chosen over Redis (a second service to run) and
 * over a logged table (an fsync per request): ≈ 0.4 ms per request (DESIGN.md §8). A request
 * that is refused is counted in no window, as with the memory limiter.
 */
export class PostgresRateLimiter implements RateLimiter {
  constructor(
    private readonly db: PgDb,
    private windows: RateWindow[],
  ) {}

  setWindows(windows: RateWindow[]): void {
    this.windows = windows;
  }

  async check(key: string, now: number): Promise<RateDecision> {
    const rows = await this.db.query<{ allowed: boolean; window_ms: number; window_start: number; used: number; lim: number }>(
      "SELECT * FROM aitbc_rate_take($1, $2, $3::bigint[], $4::integer[])",
      [key, now, this.windows.map((w) => w.windowMs), this.windows.map((w) => w.limit)],
    );
    const states = rows.map((r) => ({ limit: r.lim, used: r.used, resetMs: r.window_start + r.window_ms - now }));
    const allowed = rows.every((r) => r.allowed);
    if (!allowed) {
      const full = states.filter((s) => s.used >= s.limit);
      const worst = full.reduce((a, b) => (a.resetMs >= b.resetMs ? a : b));
      return { allowed, limit: worst.limit, remaining: 0, resetSeconds: Math.ceil(worst.resetMs / 1000), retryAfterSeconds: Math.max(1, Math.ceil(Math.max(...full.map((s) => s.resetMs)) / 1000)) };
    }
    const tightest = states.reduce((a, b) => (a.limit - a.used <= b.limit - b.used ? a : b));
    return { allowed, limit: tightest.limit, remaining: tightest.limit - tightest.used, resetSeconds: Math.ceil(tightest.resetMs / 1000), retryAfterSeconds: 0 };
  }
}
