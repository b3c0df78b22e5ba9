import { describe, expect, it } from "vitest";
import { StatusCache } from "../../src/coordinator/http/status-cache.js";
import type { ProgressEvent } from "../../src/coordinator/store/job-events.js";

describe("StatusCache", () => {
  it("answers only for the inputs an answer was written from", () => {
    const cache = new StatusCache();
    const live: ProgressEvent = { jobId: "job_a", attempt: 1, progress: 10, tokens: 10, maxTokens: 100, tokensPerSecond: 50, at: 0 };
    cache.set("acme", "job_a", { store: 1, fleet: 1, live }, "A1");
    expect(cache.get("acme", "job_a", { store: 1, fleet: 1, live })).toBe("A1");
    expect(cache.get("globex", "job_a", { store: 1, fleet: 1, live })).toBeUndefined();
    expect(cache.get("acme", "job_a", { store: 1, fleet: 1, live: undefined })).toBeUndefined();
    expect(cache.get("acme", "job_a", { store: 2, fleet: 1, live })).toBeUndefined();
    // The newer pair dropped everything: the old inputs no longer answer either.
    expect(cache.get("acme", "job_a", { store: 1, fleet: 1, live })).toBeUndefined();
  });

  it("does not keep an answer written across a change (read before it, finished after)", () => {
    const cache = new StatusCache();
    const before = { store: 5, fleet: 3, live: undefined };
    expect(cache.get("acme", "job_a", before)).toBeUndefined();
    // Another request saw the store move on meanwhile.
    expect(cache.get("acme", "job_b", { store: 6, fleet: 3, live: undefined })).toBeUndefined();
    cache.set("acme", "job_a", before, "stale");
    expect(cache.get("acme", "job_a", { store: 6, fleet: 3, live: undefined })).toBeUndefined();
    expect(cache.get("acme", "job_a", before)).toBeUndefined();
  });

  it("keeps nothing when the store or the fleet cannot tell its version", () => {
    const cache = new StatusCache();
    cache.set("acme", "job_a", { store: undefined, fleet: 1, live: undefined }, "x");
    cache.set("acme", "job_b", { store: 1, fleet: undefined, live: undefined }, "y");
    expect(cache.get("acme", "job_a", { store: undefined, fleet: 1, live: undefined })).toBeUndefined();
    expect(cache.get("acme", "job_b", { store: 1, fleet: undefined, live: undefined })).toBeUndefined();
  });
});
