import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { expectProblem, startApi, submit, uniqueModel, type ApiHarness, type TestClock } from "./api-harness.js";

/**
 * The operator endpoints over a real coordinator (SQLite, port 0): who may call them, the
 * dashboard's session cookie, privacy of prompts, and the job actions. The fleet's miners and
 * the dashboard page itself are tested with real miners and a real browser (test/dashboard).
 */
describe("operator API (/v1/admin)", () => {
  let h: ApiHarness & { key: string };
  let ops: string;
  let opsId: string;
  const clock: TestClock = { now: Date.now() };

  beforeAll(async () => {
    h = await startApi({ "admin.requests_per_minute": 5000 }, undefined, clock);
    ({ key: ops, id: opsId } = await h.newKey("ops", "operator"));
  });
  afterAll(async () => h?.stop());

  const admin = (method: string, route: string, opts: { json?: unknown; headers?: Record<string, string>; key?: string | null } = {}): Promise<Response> =>
    h.call(method, route, { key: ops, ...opts });

  const login = async (key: string): Promise<Response> => h.call("POST", "/dashboard/login", { key: null, json: { key } });
  const cookieOf = (res: Response): string => (res.headers.get("set-cookie") ?? "").split(";")[0]!;

  it("takes operator keys only; operator keys cannot use the client API", async () => {
    await expectProblem(await admin("GET", "/v1/admin/miners", { key: null }), 401, "unauthorized");
    await expectProblem(await admin("GET", "/v1/admin/miners", { key: h.key }), 403, "operator_key_required");
    const miner = await h.newKey("acme", "miner");
    await expectProblem(await admin("GET", "/v1/admin/miners", { key: miner.key }), 403, "operator_key_required");
    await expectProblem(await admin("GET", "/v1/admin/miners", { key: `${ops.slice(0, -1)}${ops.endsWith("A") ? "B" : "A"}` }), 401, "unauthorized");
    await expectProblem(await h.call("GET", "/v1/jobs", { key: ops }), 403, "client_key_required");
    const res = await admin("GET", "/v1/admin/miners");
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ items: [] });
    // The miner gateway refuses operator keys too.
    await expectProblem(await h.call("GET", "/v1/miners/connect", { key: ops }), 401, "unauthorized");
  });

  it("has its own rate limits, reported in the RateLimit headers", async () => {
    const res = await admin("GET", "/v1/admin/queue");
    expect(res.headers.get("ratelimit-limit")).toBe("5000");
    const client = await h.call("GET", "/v1/jobs");
    expect(client.headers.get("ratelimit-limit")).toBe("60");
  });

  it("lists every tenant's jobs with filters; prompts only with show_outputs", async () => {
    const other = await h.newKey("other");
    const model = uniqueModel();
    const a = await submit(h, { model, input: "secret prompt of acme" });
    const b = await submit(h, { model, input: "secret prompt of other" }, other.key);
    const all = (await (await admin("GET", `/v1/admin/jobs?model=${model}`)).json()) as { items: { job_id: string; tenant: string; input?: string }[]; total: number };
    expect(all.items.map((j) => [j.job_id, j.tenant])).toEqual([
      [b, "other"],
      [a, "acme"],
    ]);
    expect(all.total).toBe(2);
    expect(JSON.stringify(all)).not.toContain("secret prompt");
    const one = (await (await admin("GET", `/v1/admin/jobs/${a}`)).json()) as Record<string, unknown>;
    expect(one).toMatchObject({ job_id: a, tenant: "acme", status: "queued", retry_of: null, events: [{ seq: 1, type: "queued" }] });
    expect(one).not.toHaveProperty("input");
    const byTenant = (await (await admin("GET", `/v1/admin/jobs?tenant=other&model=${model}`)).json()) as { items: { job_id: string }[] };
    expect(byTenant.items.map((j) => j.job_id)).toEqual([b]);
    await expectProblem(await admin("GET", "/v1/admin/jobs?from=yesterday"), 422);
    await expectProblem(await admin("GET", "/v1/admin/jobs?status=nonsense"), 422);
    h.coordinator.context.config = { ...h.coordinator.context.config, admin: { ...h.coordinator.context.config.admin, showOutputs: true } };
    try {
      const shown = (await (await admin("GET", `/v1/admin/jobs/${b}`)).json()) as { input?: string };
      expect(shown.input).toBe("secret prompt of other");
    } finally {
      h.coordinator.context.config = { ...h.coordinator.context.config, admin: { ...h.coordinator.context.config.admin, showOutputs: false } };
    }
  });

  it("cancels any tenant's job; retries a failed one as a new job linked by retry_of", async () => {
    const other = await h.newKey("other2");
    const queued = await submit(h, {}, other.key);
    const c = await admin("POST", `/v1/admin/jobs/${queued}/cancel`);
    expect(c.status).toBe(200);
    expect(await c.json()).toMatchObject({ job_id: queued, status: "cancelled" });
    await expectProblem(await admin("POST", `/v1/admin/jobs/${queued}/cancel`), 409, "job_finished");

    const model = uniqueModel();
    const failing = await submit(h, { model, input: "try me" }, other.key);
    const ref = await h.run(failing);
    const store = h.coordinator.store;
    expect(await store.failAttempt({ ...ref, minerId: "miner_test" }, { code: "cuda_error", message: "device lost", retryable: false }, Date.now(), 1000)).toBe("failed");
    const r = await admin("POST", `/v1/admin/jobs/${failing}/retry`);
    expect(r.status).toBe(201);
    const retried = (await r.json()) as { job_id: string; retry_of: string; status: string; tenant: string };
    expect(retried).toMatchObject({ retry_of: failing, status: "queued", tenant: "other2", model });
    expect(r.headers.get("location")).toBe(`/v1/admin/jobs/${retried.job_id}`);
    // The failed job stays failed; the tenant sees the new job as its own.
    expect((await store.getJobById(failing))?.status).toBe("failed");
    const mine = await h.call("GET", `/v1/jobs/${retried.job_id}`, { key: other.key });
    expect(mine.status).toBe(200);
    // Only finished-unsuccessfully jobs can be retried.
    await expectProblem(await admin("POST", `/v1/admin/jobs/${retried.job_id}/retry`), 409, "not_retryable");
    const failures = (await (await admin("GET", "/v1/admin/failures")).json()) as { items: { job_id: string; error: { code: string } }[] };
    expect(failures.items[0]).toMatchObject({ job_id: failing, error: { code: "cuda_error" } });
    await expectProblem(await admin("POST", "/v1/admin/jobs/job_nosuch/retry"), 404, "job_not_found");
    await expectProblem(await admin("POST", "/v1/admin/miners/miner_nosuch/drain"), 404, "miner_not_found");
  });

  it("shows queue depth and an hour of throughput in one-minute buckets", async () => {
    const model = uniqueModel();
    await submit(h, { model, priority: "high" });
    await submit(h, { model, priority: "high" });
    const q = (await (await admin("GET", "/v1/admin/queue")).json()) as { items: { model: string; priority: string; count: number }[] };
    expect(q.items).toContainEqual({ model, priority: "high", count: 2 });
    const done = await submit(h);
    // Completed at the coordinator's clock: the route buckets by it, and a real-time completion
    // falls past its last bucket once the run has crossed into the next minute (a flake under load).
    await h.complete(done, "five tokens of output", clock.now);
    const t = (await (await admin("GET", "/v1/admin/throughput")).json()) as { bucket_seconds: number; buckets: { jobs: number; tokens: number }[] };
    expect(t.bucket_seconds).toBe(60);
    expect(t.buckets).toHaveLength(60);
    expect(t.buckets.reduce((n, b) => n + b.jobs, 0)).toBeGreaterThanOrEqual(1);
    expect(t.buckets.reduce((n, b) => n + b.tokens, 0)).toBeGreaterThanOrEqual(5);
    const o = (await (await admin("GET", "/v1/admin/overview")).json()) as { summary: { jobs: Record<string, number> }; queue: { total: number } };
    expect(o.summary.jobs.completed).toBeGreaterThanOrEqual(1);
    expect(o.queue.total).toBeGreaterThanOrEqual(2);
  });

  it("logs in to the dashboard with an operator key for an HttpOnly, SameSite=Strict cookie", async () => {
    await expectProblem(await login(h.key), 401, "invalid_key");
    await expectProblem(await login("not a key"), 401, "invalid_key");
    const res = await login(ops);
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({ key_id: opsId });
    const setCookie = res.headers.get("set-cookie") ?? "";
    expect(setCookie).toMatch(/^aitbc_session=[^;]+; HttpOnly; SameSite=Strict; Path=\/; Max-Age=3600$/);
    // The cookie carries neither the key nor its secret.
    expect(setCookie).not.toContain(ops.slice(22));
    const cookie = cookieOf(res);
    const ok = await h.call("GET", "/v1/admin/miners", { key: null, headers: { cookie } });
    expect(ok.status).toBe(200);
    // Same-origin actions are fine; another origin's are refused.
    const model = uniqueModel();
    const job = await submit(h, { model });
    await expectProblem(await h.call("POST", `/v1/admin/jobs/${job}/cancel`, { key: null, headers: { cookie, origin: "https://evil.example" } }), 403, "cross_origin");
    const same = await h.call("POST", `/v1/admin/jobs/${job}/cancel`, { key: null, headers: { cookie, origin: h.url } });
    expect(same.status).toBe(200);
    // A forged or tampered cookie is nothing.
    await expectProblem(await h.call("GET", "/v1/admin/miners", { key: null, headers: { cookie: `${cookie.slice(0, -2)}xx` } }), 401);
    // A session cookie does not open the client API.
    await expectProblem(await h.call("GET", "/v1/jobs", { key: null, headers: { cookie } }), 401);
  });

  it("a session ends when it expires or its key is revoked", async () => {
    const { key, id } = await h.newKey("ops2", "operator");
    const cookie = cookieOf(await login(key));
    expect((await h.call("GET", "/v1/admin/queue", { key: null, headers: { cookie } })).status).toBe(200);
    clock.now += 3_600_001;
    await expectProblem(await h.call("GET", "/v1/admin/queue", { key: null, headers: { cookie } }), 401);
    const fresh = cookieOf(await login(key));
    expect((await h.call("GET", "/v1/admin/queue", { key: null, headers: { cookie: fresh } })).status).toBe(200);
    await h.coordinator.store.revokeKey(id, Date.now());
    await expectProblem(await h.call("GET", "/v1/admin/queue", { key: null, headers: { cookie: fresh } }), 401);
    const out = await h.call("POST", "/dashboard/logout", { key: null });
    expect(out.status).toBe(204);
    expect(out.headers.get("set-cookie")).toMatch(/^aitbc_session=; .*Max-Age=0/);
  });

  it("serves the page with a strict content security policy, and documents /v1/admin in OpenAPI", async () => {
    const page = await h.call("GET", "/dashboard", { key: null });
    expect(page.status).toBe(200);
    expect(page.headers.get("content-type")).toMatch(/^text\/html/);
    expect(page.headers.get("content-security-policy")).toContain("default-src 'self'");
    const html = await page.text();
    expect(html).toContain('<label for="key">Operator key</label>');
    expect(html).not.toMatch(/https?:\/\//);
    const js = await h.call("GET", "/dashboard/app.js", { key: null });
    expect(js.headers.get("content-type")).toMatch(/^text\/javascript/);
    expect((await js.text()).length).toBeGreaterThan(1000);
    const doc = (await (await h.call("GET", "/openapi.json", { key: null })).json()) as { paths: Record<string, unknown> };
    for (const p of ["/v1/admin/miners", "/v1/admin/jobs", "/v1/admin/jobs/{job_id}/retry", "/v1/admin/miners/{miner_id}/drain", "/v1/admin/throughput", "/dashboard/login"]) {
      expect(Object.keys(doc.paths)).toContain(p);
    }
  });
});
