/**
 * A token bucket: `burst` units at once, refilled at `rate` per second. The gateway keeps two per
 * connection, one of frames and one of bytes: every frame a miner sends takes one frame and its
 * size in bytes, valid or not. A well-behaved miner sends about two small frames a second per
 * running job (progress at the default 500 ms) plus one heartbeat per heartbeat interval, and a
 * result now and then (up to 48 MiB in chunks), far below the defaults (200 frames/s with a burst
 * of 500, enough for a 256-chunk result; 1 MiB/s with a burst of 64 MiB).
 */
export class TokenBucket {
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

  /** Takes `n` tokens; false (taking none) when fewer are left. */
  take(now: number, n = 1): boolean {
    const elapsed = Math.max(0, now - this.last) / 1000;
    this.last = now;
    this.tokens = Math.min(this.burst, this.tokens + elapsed * this.rate);
    if (this.tokens < n) return false;
    this.tokens -= n;
    return true;
  }
}

/** Frames and bytes of one connection. */
export class FrameBudget {
  private readonly frames: TokenBucket;
  private readonly bytes: TokenBucket;

  constructor(limits: { frameRate: number; frameBurst: number; byteRate: number; byteBurst: number }, now: number) {
    this.frames = new TokenBucket(limits.frameRate, limits.frameBurst, now);
    this.bytes = new TokenBucket(limits.byteRate, limits.byteBurst, now);
  }

  /** Takes one frame of `size` bytes; false when either budget is spent. */
  take(now: number, size: number): boolean {
    return this.frames.take(now) && this.bytes.take(now, size);
  }
}
