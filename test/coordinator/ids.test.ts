import { describe, expect, it } from "vitest";
import { randomId, timeOrderedId } from "../../src/coordinator/store/ids.js";

describe("job ids", () => {
  it("are job_, 8 base-36 digits of the creation time and 12 random characters", () => {
    const now = Date.UTC(2026, 11, 7, 23, 0, 0, 123);
    const id = timeOrderedId("job_", now);
    expect(id).toMatch(/^job_[a-z0-9]{20}$/);
    expect(parseInt(id.slice(4, 12), 36)).toBe(now);
  });

  it("sort by creation time, whatever their random part, and differ within one millisecond", () => {
    const now = Date.UTC(2026, 0, 1);
    const ids = [now + 1, now, now + 1000, now + 60_000, now + 7].map((t) => timeOrderedId("job_", t));
    expect([...ids].sort()).toEqual([ids[1], ids[0], ids[4], ids[2], ids[3]]);
    const same = new Set(Array.from({ length: 1000 }, () => timeOrderedId("job_", now)));
    expect(same.size).toBe(1000);
  });

  it("stay in the id alphabet for any clock a test may fake (0, fractions, negative)", () => {
    for (const t of [0, 1.7, -5, 2 ** 45]) expect(timeOrderedId("job_", t), String(t)).toMatch(/^job_[a-z0-9]{20}$/);
  });

  it("other ids stay random", () => {
    expect(randomId("file_")).toMatch(/^file_[a-z0-9]{16}$/);
  });
});
