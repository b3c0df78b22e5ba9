/**
 * Per-key request limits over two fixed windows (by default 60 a minute and 1000 an hour, as
 * the API reference says). A request counts against both; it is refused when either is full.
 * MemoryRateLimiter keeps the state in memory (one coordinator): a restart forgives the current
 * windows, which errs on the side of the client. With several replicas the windows live in the
 * database (PostgresRateLimiter) so a key's limits hold across all of them. Limits can be
 * replaced at run time (SIGHUP reload).
 */
export interface RateWindow {
  limit: number;
  windowMs: number;
}

export interface RateDecision {
  allowed: boolean;
  /** The window that is closest to its limit (the one the headers describe). */
  limit: number;
  remaining: number;
  /** Seconds until that window resets. */
  resetSeconds: number;
  /** When refused: seconds until a request can succeed. */
  retryAfterSeconds: number;
}

interface Counter {
  windowStart: number;
  count: number;
}

/** Counts a request of a key against its windows; the memory one for one coordinator, a database one for several. */
export interface RateLimiter {
  check(key: string, now: number): Promise<RateDecision>;
  /** Replaces the windows (SIGHUP reload); the current counts are forgotten. */
  setWindows(windows: RateWindow[]): void;
}

export class MemoryRateLimiter implements RateLimiter {
  private readonly counters = new Map<string, Counter[]>();

  constructor(private windows: RateWindow[]) {}

  setWindows(windows: RateWindow[]): void {
    this.windows = windows;
    this.counters.clear();
  }

  check(key: string, now: number): Promise<RateDecision> {
    return Promise.resolve(this.checkNow(key, now));
  }

  private checkNow(key: string, now: number): RateDecision {
    let counters = this.counters.get(key);
    if (counters === undefined || counters.length !== this.windows.length) {
      counters = this.windows.map(() => ({ windowStart: now, count: 0 }));
      this.counters.set(key, counters);
    }
    const states = this.windows.map((w, i) => {
      const c = counters[i]!;
      if (now - c.windowStart >= w.windowMs) {
        c.windowStart = now - ((now - c.windowStart) % w.windowMs);
        c.count = 0;
      }
      return { w, c, resetMs: c.windowStart + w.windowMs - now };
    });
    const full = states.filter((s) => s.c.count >= s.w.limit);
    if (full.length > 0) {
      const wait = Math.max(...full.map((s) => s.resetMs));
      const worst = full.reduce((a, b) => (a.resetMs >= b.resetMs ? a : b));
      return {
        allowed: false,
        limit: worst.w.limit,
        remaining: 0,
        resetSeconds: Math.ceil(worst.resetMs / 1000),
        retryAfterSeconds: Math.max(1, Math.ceil(wait / 1000)),
      };
    }
    for (const s of states) s.c.count += 1;
    const tightest = states.reduce((a, b) => (a.w.limit - a.c.count <= b.w.limit - b.c.count ? a : b));
    return {
      allowed: true,
      limit: tightest.w.limit,
      remaining: tightest.w.limit - tightest.c.count,
      resetSeconds: Math.ceil(tightest.resetMs / 1000),
      retryAfterSeconds: 0,
    };
  }
}
