/**
 * A token bucket of frames for one connection: `burst` frames at once, refilled at `rate` per
 * second. Every frame a miner sends takes one, valid or not. A well-behaved miner sends about two
 * frames a second per running job (progress at the default 500 ms) plus one heartbeat per
 * heartbeat interval, far below the defaults (200/s, burst 500, enough for a 256-chunk result).
 */
export class FrameBudget {
  private tokens: number;
  private last: number;

  constructor(
    private readonly rate: number,
    private readonly burst: number,
    now: number,
  ) {
    this.tokens = burst;
    this.last = now;
  }

  /** Takes one frame's token; false when the budget is spent. */
  take(now: number): boolean {
    const elapsed = Math.max(0, now - this.last) / 1000;
    this.last = now;
    this.tokens = Math.min(this.burst, this.tokens + elapsed * this.rate);
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }
}
