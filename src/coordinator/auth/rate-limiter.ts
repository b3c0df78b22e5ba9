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

  // Every client request passes here: plain loops, no per-call arrays.
  private checkNow(key: string, now: number): RateDecision {
    const windows = this.windows;
    let counters = this.counters.get(key);
    if (counters === undefined || counters.length !== windows.length) {
      counters = windows.map(() => ({ windowStart: now, count: 0 }));
      this.counters.set(key, counters);
    }
    // A full window refuses; the one that resets last says when to retry.
    let worst = -1;
    let worstResetMs = -1;
    for (let i = 0; i < windows.length; i++) {
      const w = windows[i]!;
      const c = counters[i]!;
      if (now - c.windowStart >= w.windowMs) {
        c.windowStart = now - ((now - c.windowStart) % w.windowMs);
        c.count = 0;
      }
      const resetMs = c.windowStart + w.windowMs - now;
      if (c.count >= w.limit && resetMs > worstResetMs) {
        worst = i;
        worstResetMs = resetMs;
      }
    }
    if (worst >= 0) {
      return {
        allowed: false,
        limit: windows[worst]!.limit,
        remaining: 0,
        resetSeconds: Math.ceil(worstResetMs / 1000),
        retryAfterSeconds: Math.max(1, Math.ceil(worstResetMs / 1000)),
      };
    }
    // Counted against every window; the headers describe the one with the fewest left (the first of equals).
    let tightest = 0;
    let fewest = Infinity;
    for (let i = 0; i < windows.length; i++) {
      const c = counters[i]!;
      c.count += 1;
      const left = windows[i]!.limit - c.count;
      if (left < fewest) {
        tightest = i;
        fewest = left;
      }
    }
    const c = counters[tightest]!;
    return {
      allowed: true,
      limit: windows[tightest]!.limit,
      remaining: fewest,
      resetSeconds: Math.ceil((c.windowStart + windows[tightest]!.windowMs - now) / 1000),
      retryAfterSeconds: 0,
    };
  }
}
