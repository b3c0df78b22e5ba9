/**
 * Exponential backoff with full jitter, shared by reconnects and retries.
 * With the defaults (base 500 ms, factor 2, cap 30 s) the upper bounds of successive delays
 * are 0.5 s, 1 s, 2 s, 4 s, 8 s, 16 s, 30 s, 30 s, …; each actual delay is drawn uniformly
 * from [bound/2, bound] so a fleet of miners reconnecting after a coordinator restart spreads
 * out. `reset()` after a success starts again from the base.
 */
export interface BackoffOptions {
  baseMs?: number;
  factor?: number;
  maxMs?: number;
  random?: () => number;
}

export class Backoff {
  private attempt = 0;
  private readonly baseMs: number;
  private readonly factor: number;
  private readonly maxMs: number;
  private readonly random: () => number;

  constructor(options: BackoffOptions = {}) {
    this.baseMs = options.baseMs ?? 500;
    this.factor = options.factor ?? 2;
    this.maxMs = options.maxMs ?? 30_000;
    this.random = options.random ?? Math.random;
  }

  /** The next delay in milliseconds; each call moves one step further. */
  next(): number {
    const bound = Math.min(this.maxMs, this.baseMs * this.factor ** this.attempt);
    this.attempt += 1;
    return Math.round(bound / 2 + (this.random() * bound) / 2);
  }

  reset(): void {
    this.attempt = 0;
  }

  get attempts(): number {
    return this.attempt;
  }
}

/** Resolves after `ms`, or rejects with the signal's reason when it aborts first. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason instanceof Error ? signal.reason : new Error("aborted"));
      return;
    }
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal?.reason instanceof Error ? signal.reason : new Error("aborted"));
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
