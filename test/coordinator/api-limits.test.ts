import { afterEach, describe, expect, it } from "vitest";
import { expectProblem, sleep, startApi, submit, type ApiHarness, type TestClock } from "./api-harness.js";

/**
 * Rate limits per key, both windows (the API reference: 60/minute and 1000/hour), with windows
 * shortened through config. The coordinator's clock is a test clock that the test moves past a
 * window, so a slow, shared CI machine cannot roll a window early; one test also waits on the
 * real clock (a behaviour check that a refused key is served again, not a timing assertion).
 */
const started: ApiHarness[] = [];
afterEach(async () => {
  for (const h of started.splice(0)) await h.stop();
});

async function start(overrides: Record<string, unknown>, clock?: TestClock) {
  const h = await startApi(overrides, undefined, clock);
  started.push(h);
  return h;
}

describe("rate limits", () => {
  it("refuses the request after requests_per_minute with 429, Retry-After and RateLimit-* headers, per key, and recovers", async () => {
    const clock = { now: Date.parse("2026-03-01T10:00:00.000Z") };
    const h = await start({ "limits.requests_per_minute": 3, "limits.minute_window": "1s", "limits.requests_per_hour": 1000 }, clock);
    const remaining: string[] = [];
    for (let i = 0; i < 3; i++) {
      const res = await h.call("GET", "/v1/jobs");
      expect(res.status).toBe(200);
      expect(res.headers.get("ratelimit-limit")).toBe("3");
      remaining.push(res.headers.get("ratelimit-remaining") ?? "");
      expect(Number(res.headers.get("ratelimit-reset"))).toBeGreaterThanOrEqual(0);
    }
    expect(remaining).toEqual(["2", "1", "0"]);

    const refused = await h.call("GET", "/v1/jobs");
    expect(refused.headers.get("ratelimit-limit")).toBe("3");
    expect(refused.headers.get("ratelimit-remaining")).toBe("0");
    expect(refused.headers.get("ratelimit-reset")).not.toBeNull();
    const retryAfter = Number(refused.headers.get("retry-after"));
    expect(retryAfter).toBeGreaterThanOrEqual(1);
    const p = await expectProblem(refused, 429, "rate_limited");
    expect(p.retry_after_seconds).toBe(retryAfter);
    // Every kind of client request counts, not only GETs.
    await expectProblem(await h.call("POST", "/v1/jobs", { json: { model: "gpt2", input: "x" } }), 429, "rate_limited");

    // Another key (same tenant even) has its own budget.
    const second = await h.newKey("acme");
    expect((await h.call("GET", "/v1/jobs", { key: second.key })).status).toBe(200);
    // Public endpoints are not limited.
    expect((await h.call("GET", "/healthz")).status).toBe(200);

    clock.now += 1000;
    const again = await h.call("GET", "/v1/jobs");
    expect(again.status).toBe(200);
    expect(again.headers.get("ratelimit-remaining")).toBe("2");
  });

  it("refuses after requests_per_hour even when the minute window has room, and recovers after the hour window", async () => {
    const clock = { now: Date.parse("2026-03-01T10:00:00.000Z") };
    const h = await start(
      { "limits.requests_per_minute": 3, "limits.minute_window": "1s", "limits.requests_per_hour": 5, "limits.hour_window": "3s" },
      clock,
    );
    const statuses: number[] = [];
    for (let round = 0; round < 2; round++) {
      for (let i = 0; i < 3; i++) statuses.push((await h.call("GET", "/v1/jobs")).status);
      clock.now += 1000; // the minute window is over; only the hour window is left to refuse
    }
    // Round one: 3 served. Round two: 2 more fit the hour's 5, the third is refused.
    expect(statuses).toEqual([200, 200, 200, 200, 200, 429]);
    const refused = await h.call("GET", "/v1/jobs");
    expect(refused.headers.get("ratelimit-limit")).toBe("5");
    expect(Number(refused.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
    await expectProblem(refused, 429, "rate_limited");

    const other = await h.newKey("globex");
    expect((await h.call("GET", "/v1/jobs", { key: other.key })).status).toBe(200);

    // Retry-After points past the hour window (t=3s), not merely the next minute window.
    expect(Number(refused.headers.get("retry-after"))).toBe(1);
    clock.now += 1000;
    expect((await h.call("GET", "/v1/jobs")).status).toBe(200);
  });

  it("serves a refused key again once the window has passed on the real clock", async () => {
    const h = await start({ "limits.requests_per_minute": 1, "limits.minute_window": "2s" });
    expect((await h.call("GET", "/v1/jobs")).status).toBe(200);
    const refused = await h.call("GET", "/v1/jobs");
    await expectProblem(refused, 429, "rate_limited");
    await sleep(Number(refused.headers.get("retry-after")) * 1000 + 100);
    expect((await h.call("GET", "/v1/jobs")).status).toBe(200);
  });

  it("does not count a request without a valid key against anyone", async () => {
    const h = await start({ "limits.requests_per_minute": 2, "limits.minute_window": "1m" });
    for (let i = 0; i < 5; i++) await expectProblem(await h.call("GET", "/v1/jobs", { key: "aitbc_ck_wrong" }), 401);
    expect((await h.call("GET", "/v1/jobs")).headers.get("ratelimit-remaining")).toBe("1");
  });

  it("refuses a submit over limits.max_queued_jobs_per_tenant with 429 and Retry-After", async () => {
    const h = await start({ "limits.max_queued_jobs_per_tenant": 2 });
    await submit(h);
    await submit(h);
    const res = await h.call("POST", "/v1/jobs", { json: { model: "gpt2", input: "x" } });
    expect(res.headers.get("retry-after")).not.toBeNull();
    await expectProblem(res, 429, "queue_full");
    // Another tenant's queue is its own.
    const other = await h.newKey("globex");
    await submit(h, {}, other.key);
  });
});
