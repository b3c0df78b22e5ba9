import { describe, expect, it } from "vitest";
import { MemoryRateLimiter } from "../../src/coordinator/auth/rate-limiter.js";

const MINUTE = 60_000;
const HOUR = 3_600_000;

describe("MemoryRateLimiter", () => {
  it("counts each request against every window and reports the one with the fewest left", async () => {
    const limiter = new MemoryRateLimiter([
      { limit: 3, windowMs: MINUTE },
      { limit: 5, windowMs: HOUR },
    ]);
    const t0 = 1_000_000;
    const first = await limiter.check("k", t0);
    expect(first).toEqual({ allowed: true, limit: 3, remaining: 2, resetSeconds: 60, retryAfterSeconds: 0 });
    await limiter.check("k", t0 + 1_000);
    const third = await limiter.check("k", t0 + 2_000);
    expect(third).toMatchObject({ allowed: true, limit: 3, remaining: 0, resetSeconds: 58 });
    // Another key has its own counts.
    expect(await limiter.check("other", t0 + 2_000)).toMatchObject({ allowed: true, remaining: 2 });
  });

  it("refuses while a window is full, with the wait until it resets, and counts nothing refused", async () => {
    const limiter = new MemoryRateLimiter([
      { limit: 2, windowMs: MINUTE },
      { limit: 3, windowMs: HOUR },
    ]);
    const t0 = 0;
    await limiter.check("k", t0);
    await limiter.check("k", t0);
    const refused = await limiter.check("k", t0 + 30_500);
    expect(refused).toEqual({ allowed: false, limit: 2, remaining: 0, resetSeconds: 30, retryAfterSeconds: 30 });
    // The minute window resets; the hour window (3) now has one left and is the tighter one.
    const next = await limiter.check("k", t0 + MINUTE);
    expect(next).toEqual({ allowed: true, limit: 3, remaining: 0, resetSeconds: 3540, retryAfterSeconds: 0 });
    // Both full: the hour window resets last, so it is the one named and waited for.
    await limiter.check("k", t0 + MINUTE + 1);
    const both = await limiter.check("k", t0 + MINUTE + 2);
    expect(both).toMatchObject({ allowed: false, limit: 3, resetSeconds: 3540, retryAfterSeconds: 3540 });
  });

  it("starts new counts when its windows are replaced", async () => {
    const limiter = new MemoryRateLimiter([{ limit: 1, windowMs: MINUTE }]);
    await limiter.check("k", 0);
    expect((await limiter.check("k", 1)).allowed).toBe(false);
    limiter.setWindows([
      { limit: 2, windowMs: MINUTE },
      { limit: 10, windowMs: HOUR },
    ]);
    expect(await limiter.check("k", 2)).toMatchObject({ allowed: true, limit: 2, remaining: 1 });
  });
});
