import { mkdtempSync, rmSync, unlinkSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import Database from "better-sqlite3";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { silentLogger } from "../../src/common/logger.js";
import { loadCoordinatorConfig } from "../../src/coordinator/config.js";
import { Coordinator, databasePath } from "../../src/coordinator/coordinator.js";

/**
 * The client REST API end to end: a real Coordinator on port 0 with a real SQLite file in a
 * temp dir, driven over HTTP with fetch. Completed jobs come from the store's miner-side verbs
 * (claim, run, result file, commit), exactly what the miner gateway does.
 */
interface Started {
  coordinator: Coordinator;
  url: string;
  dir: string;
  clock: { now: number };
}

const dirs: string[] = [];
const running: Coordinator[] = [];

async function startCoordinator(
  overrides: Record<string, unknown> = {},
  opts: { dir?: string; clock?: { now: number } } = {},
): Promise<Started> {
  const dir = opts.dir ?? mkdtempSync(path.join(os.tmpdir(), "aitbc-api-"));
  if (opts.dir === undefined) dirs.push(dir);
  const config = loadCoordinatorConfig(undefined, {
    optional: true,
    env: {},
    overrides: {
      "server.port": 0,
      "storage.data_dir": dir,
      "log.level": "silent",
      "limits.requests_per_minute": 100_000,
      "limits.requests_per_hour": 100_000,
      tenants: { acme: { s3_buckets: ["acme-results"] } },
      ...overrides,
    },
  });
  const clock = opts.clock ?? { now: Date.now() };
  const coordinator = new Coordinator({ config, log: silentLogger(), now: () => clock.now });
  const url = await coordinator.start();
  running.push(coordinator);
  return { coordinator, url, dir, clock };
}

afterEach(async () => {
  for (const c of running.splice(0)) await c.stop();
});
afterAll(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

async function clientKey(c: Coordinator, tenant = "acme"): Promise<string> {
  return (await c.store.createKey("client", `test-${tenant}`, tenant, Date.now())).key;
}

interface Answer {
  status: number;
  headers: Headers;
  body: Record<string, unknown>;
  text: string;
}

async function call(
  url: string,
  method: string,
  route: string,
  key: string | undefined,
  body?: unknown,
  headers: Record<string, string> = {},
): Promise<Answer> {
  const h: Record<string, string> = { ...headers };
  if (key !== undefined) h.authorization = `Bearer ${key}`;
  let payload: string | Buffer | undefined;
  if (typeof body === "string" || Buffer.isBuffer(body)) payload = body;
  else if (body !== undefined) {
    payload = JSON.stringify(body);
    h["content-type"] ??= "application/json";
  }
  const res = await fetch(`${url}${route}`, { method, headers: h, ...(payload === undefined ? {} : { body: payload }) });
  const text = await res.text();
  let parsed: Record<string, unknown> = {};
  try {
    parsed = JSON.parse(text) as Record<string, unknown>;
  } catch {
    // not JSON (docs page, text download)
  }
  return { status: res.status, headers: res.headers, body: parsed, text };
}

function expectProblem(a: Answer, status: number, code: string): void {
  expect(a.status, a.text).toBe(status);
  expect(a.headers.get("content-type")).toMatch(/^application\/problem\+json/);
  expect(a.body).toMatchObject({ status, code });
  expect(typeof a.body.detail).toBe("string");
  expect(a.text).not.toMatch(/at .*\.(ts|js):\d+/); // never a stack trace
}

const SUBMIT = { model: "gpt2", input: "Once upon a time", parameters: { max_new_tokens: 8 } };

/**
 * Runs a queued job to completion through the store's miner-side verbs. The lease is taken at
 * the real time (the coordinator's reaper runs on it); `completedAt` dates the commit.
 */
async function complete(c: Coordinator, jobId: string, output: string, completedAt = Date.now()): Promise<void> {
  const store = c.store;
  const job = await store.getJobById(jobId);
  if (job === null) throw new Error("no such job");
  const now = Date.now();
  const a = await store.claimNextJob({ minerId: "miner_test", gpus: [], models: [job.model] }, now, 60_000);
  if (a === null || a.job.id !== jobId) throw new Error(`expected to claim ${jobId}`);
  const ref = { jobId, attempt: a.attempt, leaseToken: a.leaseToken };
  expect(await store.markRunning(ref, now, 60_000)).toBe(true);
  const put = await c.context.results.put(jobId, a.attempt, Buffer.from(output, "utf8"));
  const outcome = await store.commitResult(
    ref,
    { ...put, finishReason: "length", usage: { prompt_tokens: 4, completion_tokens: 8 }, tokensPerSecond: 50, attempt: a.attempt },
    completedAt,
  );
  expect(outcome).toBe("committed");
}

async function submit(url: string, key: string, body: unknown = SUBMIT): Promise<string> {
  const a = await call(url, "POST", "/v1/jobs", key, body);
  expect(a.status, a.text).toBe(201);
  return a.body.job_id as string;
}

describe("client API", () => {
  let s: Started;
  let key: string;
  let otherKey: string;

  beforeAll(async () => {
    s = await startCoordinator({ "limits.max_page_size": 5, "limits.max_file_size": 64, "server.body_limit": 4096 });
    // This coordinator lives for the whole describe; keep it out of the per-test teardown.
    running.splice(running.indexOf(s.coordinator), 1);
    key = await clientKey(s.coordinator);
    otherKey = await clientKey(s.coordinator, "globex");
  });
  afterAll(async () => {
    await s.coordinator.stop();
  });

  describe("public endpoints", () => {
    it("answers health, readiness, the OpenAPI document and the docs page without a key", async () => {
      const health = await call(s.url, "GET", "/healthz", undefined);
      expect(health.status).toBe(200);
      expect(health.body.status).toBe("ok");
      const ready = await call(s.url, "GET", "/readyz", undefined);
      expect(ready.status).toBe(200);
      expect(ready.body).toMatchObject({ status: "ready", miners: 0 });
      const spec = await call(s.url, "GET", "/openapi.json", undefined);
      expect(spec.status).toBe(200);
      const paths = spec.body.paths as Record<string, Record<string, unknown>>;
      expect(Object.keys(paths)).toEqual(
        expect.arrayContaining(["/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/download", "/v1/jobs/history", "/v1/files"]),
      );
      expect(paths["/v1/jobs"]?.post).toBeDefined();
      expect(paths["/v1/jobs/{job_id}"]?.delete).toBeDefined();
      const docs = await fetch(`${s.url}/docs`, { redirect: "follow" });
      expect(docs.status).toBe(200);
      expect(await docs.text()).toMatch(/swagger/i);
    });

    it("answers an unknown route with a 404 problem", async () => {
      expectProblem(await call(s.url, "GET", "/v2/nothing", key), 404, "not_found");
    });
  });

  describe("authentication", () => {
    it("refuses a missing, malformed or unknown key with 401", async () => {
      const missing = await call(s.url, "GET", "/v1/jobs", undefined);
      expectProblem(missing, 401, "unauthorized");
      expect(missing.headers.get("www-authenticate")).toMatch(/^Bearer/);
      expectProblem(await call(s.url, "GET", "/v1/jobs", "nonsense"), 401, "unauthorized");
      expectProblem(await call(s.url, "GET", "/v1/jobs", `${key.slice(0, -2)}xx`), 401, "unauthorized");
      expectProblem(await call(s.url, "POST", "/v1/jobs", undefined, SUBMIT), 401, "unauthorized");
    });

    it("refuses a miner key on the client API and a revoked client key", async () => {
      const miner = await s.coordinator.store.createKey("miner", "rig", "acme", Date.now());
      expectProblem(await call(s.url, "GET", "/v1/jobs", miner.key), 401, "unauthorized");
      const k = await s.coordinator.store.createKey("client", "temp", "acme", Date.now());
      expect((await call(s.url, "GET", "/v1/jobs", k.key)).status).toBe(200);
      await s.coordinator.store.revokeKey(k.record.id, Date.now());
      expectProblem(await call(s.url, "GET", "/v1/jobs", k.key), 401, "unauthorized");
    });
  });

  describe("submit and status", () => {
    it("commits a job and reports the seed's fields, defaults and the eligible miner count", async () => {
      const a = await call(s.url, "POST", "/v1/jobs", key, SUBMIT);
      expect(a.status).toBe(201);
      expect(a.body.job_id).toMatch(/^job_[a-z0-9]+$/);
      expect(typeof a.body.estimated_cost).toBe("number");
      expect(a.body.estimated_time_seconds as number).toBeGreaterThan(0);
      // Committed before the answer: the store has it.
      expect((await s.coordinator.store.getJobById(a.body.job_id as string))?.status).toBe("queued");
      const st = await call(s.url, "GET", `/v1/jobs/${String(a.body.job_id)}`, key);
      expect(st.status).toBe(200);
      expect(st.body).toMatchObject({
        job_id: a.body.job_id,
        status: "queued",
        progress: 0,
        miner_id: null,
        started_at: null,
        completed_at: null,
        result: null,
        eligible_miners: 0,
        attempt: 0,
        cancel_requested: false,
        error: null,
        output_config: { destination: "local", format: "json" },
      });
      expect(new Date(st.body.created_at as string).toISOString()).toBe(st.body.created_at);
      const params = st.body.parameters as Record<string, unknown>;
      expect(params.max_new_tokens).toBe(8);
      // Absent fields take their documented defaults; a seed is fixed at submit.
      expect(params).toMatchObject({ temperature: expect.any(Number), top_k: expect.any(Number), top_p: expect.any(Number), stop: [] });
      expect(Number.isInteger(params.seed)).toBe(true);
    });

    it("keeps a given seed and the full parameter set", async () => {
      const parameters = { max_new_tokens: 4, temperature: 0, top_k: 1, top_p: 0.5, repetition_penalty: 1.2, stop: ["\n"], seed: 1234 };
      const id = await submit(s.url, key, { ...SUBMIT, parameters });
      const st = await call(s.url, "GET", `/v1/jobs/${id}`, key);
      expect(st.body.parameters).toEqual(parameters);
    });

    it("answers 404 for an unknown or malformed job id", async () => {
      expectProblem(await call(s.url, "GET", "/v1/jobs/job_doesnotexist1", key), 404, "job_not_found");
      expectProblem(await call(s.url, "GET", "/v1/jobs/not-a-job-id", key), 404, "job_not_found");
    });

    it("answers 400 for malformed JSON and 422 for schema violations", async () => {
      expectProblem(await call(s.url, "POST", "/v1/jobs", key, "{not json", { "content-type": "application/json" }), 400, "malformed_json");
      expectProblem(await call(s.url, "POST", "/v1/jobs", key, { input: "x" }), 422, "validation_failed");
      expectProblem(await call(s.url, "POST", "/v1/jobs", key, { ...SUBMIT, surprise: 1 }), 422, "validation_failed");
      expectProblem(await call(s.url, "POST", "/v1/jobs", key, { ...SUBMIT, input: "" }), 422, "validation_failed");
      expectProblem(await call(s.url, "POST", "/v1/jobs", key, { ...SUBMIT, priority: "urgent" }), 422, "validation_failed");
      for (const bad of [{ max_new_tokens: 0 }, { temperature: -1 }, { top_p: 1.5 }, { top_k: -3 }, { seed: "x" }, { unknown: 1 }]) {
        const a = await call(s.url, "POST", "/v1/jobs", key, { ...SUBMIT, parameters: bad });
        expectProblem(a, 422, "validation_failed");
      }
      expectProblem(await call(s.url, "POST", "/v1/jobs", key, { ...SUBMIT, output_config: { format: "xml" } }), 422, "validation_failed");
      expectProblem(await call(s.url, "POST", "/v1/jobs", key, { ...SUBMIT, requirements: { gpu_count: 0 } }), 422, "validation_failed");
    });

    it("answers 413 for a body over the limit", async () => {
      const big = { ...SUBMIT, input: "x".repeat(8192) };
      expectProblem(await call(s.url, "POST", "/v1/jobs", key, big), 413, "payload_too_large");
    });

    it("returns the same job for a retried submit with an Idempotency-Key, 409 for another body", async () => {
      const headers = { "idempotency-key": "retry-1" };
      const a = await call(s.url, "POST", "/v1/jobs", key, SUBMIT, headers);
      const b = await call(s.url, "POST", "/v1/jobs", key, SUBMIT, headers);
      expect(a.status).toBe(201);
      expect([200, 201]).toContain(b.status);
      expect(b.body.job_id).toBe(a.body.job_id);
      expect(b.body.estimated_cost).toBe(a.body.estimated_cost);
      const c = await call(s.url, "POST", "/v1/jobs", key, { ...SUBMIT, input: "something else" }, headers);
      expectProblem(c, 409, "idempotency_key_reused");
      // The same body serialised in another key order (nested objects too) is the same request.
      const reordered = { parameters: { max_new_tokens: 8 }, input: SUBMIT.input, model: SUBMIT.model };
      expect(JSON.stringify(reordered)).not.toBe(JSON.stringify(SUBMIT));
      const e = await call(s.url, "POST", "/v1/jobs", key, reordered, headers);
      expect([200, 201]).toContain(e.status);
      expect(e.body.job_id).toBe(a.body.job_id);
      const nested = await call(s.url, "POST", "/v1/jobs", key, { ...SUBMIT, parameters: { max_new_tokens: 8, seed: 1 } }, headers);
      expectProblem(nested, 409, "idempotency_key_reused");
      // Another tenant's identical key is its own.
      const d = await call(s.url, "POST", "/v1/jobs", otherKey, SUBMIT, headers);
      expect(d.status).toBe(201);
      expect(d.body.job_id).not.toBe(a.body.job_id);
    });

    it("checks the output destination: local, an allowed bucket, else 422", async () => {
      expect((await call(s.url, "POST", "/v1/jobs", key, { ...SUBMIT, output_config: { destination: "s3://acme-results/out/x" } })).status).toBe(201);
      expectProblem(
        await call(s.url, "POST", "/v1/jobs", key, { ...SUBMIT, output_config: { destination: "s3://someone-else/x" } }),
        422,
        "s3_bucket_not_allowed",
      );
      // The bucket is allowed for acme, not for globex.
      expectProblem(
        await call(s.url, "POST", "/v1/jobs", otherKey, { ...SUBMIT, output_config: { destination: "s3://acme-results/x" } }),
        422,
        "s3_bucket_not_allowed",
      );
      const bad = await call(s.url, "POST", "/v1/jobs", key, { ...SUBMIT, output_config: { destination: "ftp://x" } });
      expect(bad.status).toBe(422);
      expect(bad.headers.get("content-type")).toMatch(/problem\+json/);
    });
  });

  describe("files", () => {
    it("uploads a UTF-8 text file and runs a job on it by file_id", async () => {
      const up = await call(s.url, "POST", "/v1/files", key, "Über alles: a prompt", { "content-type": "text/plain" });
      expect(up.status, up.text).toBe(201);
      expect(up.body.file_id).toMatch(/^file_/);
      expect(up.body.bytes).toBe(Buffer.byteLength("Über alles: a prompt"));
      const id = await submit(s.url, key, { ...SUBMIT, input: up.body.file_id });
      expect((await s.coordinator.store.getJobById(id))?.input).toBe("Über alles: a prompt");
      // Another tenant cannot use it.
      expectProblem(await call(s.url, "POST", "/v1/jobs", otherKey, { ...SUBMIT, input: up.body.file_id }), 422, "file_not_found");
    });

    it("refuses invalid UTF-8, an empty file and a file over the cap", async () => {
      const bad = await call(s.url, "POST", "/v1/files", key, Buffer.from([0x66, 0xff, 0xfe, 0x6f]), { "content-type": "application/octet-stream" });
      expectProblem(bad, 422, "validation_failed");
      expect((await call(s.url, "POST", "/v1/files", key, "", { "content-type": "text/plain" })).status).toBe(422);
      expectProblem(await call(s.url, "POST", "/v1/files", key, "y".repeat(65), { "content-type": "text/plain" }), 413, "payload_too_large");
    });
  });

  describe("list and cursor paging", () => {
    it("pages with limit, total, has_more and a cursor; caps limit; filters by status", async () => {
      const k = await clientKey(s.coordinator, "pager");
      const ids: string[] = [];
      for (let i = 0; i < 7; i++) ids.push(await submit(s.url, k));
      await call(s.url, "DELETE", `/v1/jobs/${ids[0]!}`, k);
      const p1 = await call(s.url, "GET", "/v1/jobs?limit=3", k);
      expect(p1.status).toBe(200);
      expect(p1.body).toMatchObject({ total: 7, has_more: true });
      const j1 = (p1.body.jobs as { job_id: string }[]).map((j) => j.job_id);
      expect(j1).toEqual([ids[6], ids[5], ids[4]]);
      const p2 = await call(s.url, "GET", `/v1/jobs?limit=3&cursor=${encodeURIComponent(p1.body.next_cursor as string)}`, k);
      const p3 = await call(s.url, "GET", `/v1/jobs?limit=3&cursor=${encodeURIComponent(p2.body.next_cursor as string)}`, k);
      const all = [...j1, ...(p2.body.jobs as { job_id: string }[]).map((j) => j.job_id), ...(p3.body.jobs as { job_id: string }[]).map((j) => j.job_id)];
      expect(all).toEqual([...ids].reverse());
      expect(p3.body).toMatchObject({ has_more: false, next_cursor: null });
      // limit above max_page_size (5 here) is capped, not refused.
      const capped = await call(s.url, "GET", "/v1/jobs?limit=1000", k);
      expect((capped.body.jobs as unknown[]).length).toBe(5);
      expect(capped.body.has_more).toBe(true);
      const cancelled = await call(s.url, "GET", "/v1/jobs?status=cancelled", k);
      expect(cancelled.body.total).toBe(1);
      expect((cancelled.body.jobs as { job_id: string; status: string }[])[0]).toMatchObject({ job_id: ids[0], status: "cancelled" });
      expect((await call(s.url, "GET", "/v1/jobs?status=running", k)).body).toMatchObject({ total: 0, jobs: [], has_more: false });
      expectProblem(await call(s.url, "GET", "/v1/jobs?status=bogus", k), 422, "validation_failed");
      expectProblem(await call(s.url, "GET", "/v1/jobs?limit=0", k), 422, "validation_failed");
      expectProblem(await call(s.url, "GET", "/v1/jobs?cursor=zzz", k), 422, "validation_failed");
    });

    it("answers an empty first page", async () => {
      const k = await clientKey(s.coordinator, "empty");
      expect((await call(s.url, "GET", "/v1/jobs", k)).body).toEqual({ jobs: [], total: 0, has_more: false, next_cursor: null });
    });
  });

  describe("cancel", () => {
    it("cancels a queued job at once, marks a running one, and answers 409 for a finished one", async () => {
      const q = await submit(s.url, key);
      const c1 = await call(s.url, "DELETE", `/v1/jobs/${q}`, key);
      expect(c1.status).toBe(200);
      expect(c1.body).toMatchObject({ job_id: q, status: "cancelled" });
      expect((await call(s.url, "GET", `/v1/jobs/${q}`, key)).body.status).toBe("cancelled");
      const again = await call(s.url, "DELETE", `/v1/jobs/${q}`, key);
      expectProblem(again, 409, "job_finished");
      expect(again.body.state).toBe("cancelled");

      const k = await clientKey(s.coordinator, "canceller");
      const r = await submit(s.url, k, { ...SUBMIT, model: "cancel-model" });
      const a = await s.coordinator.store.claimNextJob({ minerId: "miner_c", gpus: [], models: ["cancel-model"] }, Date.now(), 60_000);
      expect(a?.job.id).toBe(r);
      await s.coordinator.store.markRunning({ jobId: r, attempt: a!.attempt, leaseToken: a!.leaseToken }, Date.now(), 60_000);
      const c2 = await call(s.url, "DELETE", `/v1/jobs/${r}`, k);
      expect(c2.status).toBe(202);
      expect(c2.body).toMatchObject({ job_id: r, status: "running", cancel_requested: true });
      expect((await call(s.url, "GET", `/v1/jobs/${r}`, k)).body).toMatchObject({ status: "running", cancel_requested: true, miner_id: "miner_c" });
      expectProblem(await call(s.url, "DELETE", "/v1/jobs/job_nonexistent0", key), 404, "job_not_found");
    });
  });

  describe("download", () => {
    it("refuses while the job is not done, then serves JSON with a content type and filename", async () => {
      const id = await submit(s.url, key, { ...SUBMIT, model: "dl-json" });
      expectProblem(await call(s.url, "GET", `/v1/jobs/${id}/download`, key), 409, "job_not_completed");
      await complete(s.coordinator, id, "a generated story");
      const st = await call(s.url, "GET", `/v1/jobs/${id}`, key);
      expect(st.body).toMatchObject({ status: "completed", progress: 100, miner_id: "miner_test", attempt: 1 });
      expect(st.body.completed_at).not.toBeNull();
      expect(st.body.started_at).not.toBeNull();
      expect(st.body.result).toMatchObject({ download_url: `/v1/jobs/${id}/download`, format: "json", finish_reason: "length" });
      expect(st.body.eligible_miners).toBeUndefined();
      const dl = await call(s.url, "GET", `/v1/jobs/${id}/download`, key);
      expect(dl.status).toBe(200);
      expect(dl.headers.get("content-type")).toMatch(/^application\/json/);
      expect(dl.headers.get("content-disposition")).toBe(`attachment; filename="${id}.json"`);
      expect(dl.body).toMatchObject({ job_id: id, output: "a generated story", finish_reason: "length" });
    });

    it("serves text when the job asked for text", async () => {
      const id = await submit(s.url, key, { ...SUBMIT, model: "dl-text", output_config: { format: "text" } });
      await complete(s.coordinator, id, "plain ünïcode output");
      const dl = await call(s.url, "GET", `/v1/jobs/${id}/download`, key);
      expect(dl.status).toBe(200);
      expect(dl.headers.get("content-type")).toMatch(/^text\/plain/);
      expect(dl.headers.get("content-disposition")).toBe(`attachment; filename="${id}.txt"`);
      expect(dl.text).toBe("plain ünïcode output");
    });

    it("answers 404 for an unknown job", async () => {
      expectProblem(await call(s.url, "GET", "/v1/jobs/job_nosuchjob000/download", key), 404, "job_not_found");
    });
  });

  describe("history", () => {
    it("lists the caller's finished jobs in the date range, paged, and is not read as a job id", async () => {
      const k = await clientKey(s.coordinator, "historian");
      const day1 = Date.parse("2026-03-01T10:00:00Z");
      const day2 = Date.parse("2026-03-02T23:59:00Z");
      const ids: string[] = [];
      for (const [i, at] of [day1, day1 + 1000, day2].entries()) {
        const id = await submit(s.url, k, { ...SUBMIT, model: `hist-${i}` });
        await complete(s.coordinator, id, `out ${i}`, at);
        ids.push(id);
      }
      await submit(s.url, k); // queued: never in history
      const both = await call(s.url, "GET", "/v1/jobs/history?from=2026-03-01&to=2026-03-02", k);
      expect(both.status, both.text).toBe(200);
      expect((both.body.jobs as { job_id: string }[]).map((j) => j.job_id)).toEqual([ids[2], ids[1], ids[0]]);
      expect(both.body.total).toBe(3);
      const first = await call(s.url, "GET", "/v1/jobs/history?from=2026-03-01&to=2026-03-01", k);
      expect((first.body.jobs as { job_id: string }[]).map((j) => j.job_id)).toEqual([ids[1], ids[0]]);
      const none = await call(s.url, "GET", "/v1/jobs/history?from=2026-03-03&to=2026-03-09", k);
      expect(none.body).toMatchObject({ total: 0, jobs: [] });
      const iso = await call(s.url, "GET", "/v1/jobs/history?from=2026-03-01T10:00:00.500Z&to=2026-03-02T00:00:00Z", k);
      expect((iso.body.jobs as { job_id: string }[]).map((j) => j.job_id)).toEqual([ids[1]]);
      const p1 = await call(s.url, "GET", "/v1/jobs/history?from=2026-03-01&to=2026-03-02&limit=2", k);
      expect(p1.body).toMatchObject({ total: 3, has_more: true });
      const p2 = await call(s.url, "GET", `/v1/jobs/history?from=2026-03-01&to=2026-03-02&limit=2&cursor=${encodeURIComponent(p1.body.next_cursor as string)}`, k);
      expect((p2.body.jobs as { job_id: string }[]).map((j) => j.job_id)).toEqual([ids[0]]);
      expect(p2.body.has_more).toBe(false);
      expectProblem(await call(s.url, "GET", "/v1/jobs/history?from=2026-03-05&to=2026-03-01", k), 422, "validation_failed");
      expectProblem(await call(s.url, "GET", "/v1/jobs/history?from=yesterday&to=2026-03-01", k), 422, "validation_failed");
      expectProblem(await call(s.url, "GET", "/v1/jobs/history?from=2026-02-30&to=2026-03-01", k), 422, "validation_failed");
      expectProblem(await call(s.url, "GET", "/v1/jobs/history", k), 422, "validation_failed");
    });
  });

  describe("tenant isolation", () => {
    it("hides one tenant's jobs from another in status, list, cancel, download and history", async () => {
      const mine = await submit(s.url, key, { ...SUBMIT, model: "iso-model" });
      await complete(s.coordinator, mine, "secret output");
      const queued = await submit(s.url, key);
      for (const id of [mine, queued]) {
        expectProblem(await call(s.url, "GET", `/v1/jobs/${id}`, otherKey), 404, "job_not_found");
        expectProblem(await call(s.url, "GET", `/v1/jobs/${id}/download`, otherKey), 404, "job_not_found");
        expectProblem(await call(s.url, "DELETE", `/v1/jobs/${id}`, otherKey), 404, "job_not_found");
      }
      expect((await call(s.url, "GET", `/v1/jobs/${queued}`, key)).body.status).toBe("queued");
      const list = await call(s.url, "GET", "/v1/jobs?limit=5", otherKey);
      const theirIds = (list.body.jobs as { job_id: string }[]).map((j) => j.job_id);
      expect(theirIds).not.toContain(mine);
      expect(theirIds).not.toContain(queued);
      const today = new Date().toISOString().slice(0, 10);
      const hist = await call(s.url, "GET", `/v1/jobs/history?from=2000-01-01&to=${today}`, otherKey);
      expect((hist.body.jobs as { job_id: string }[]).map((j) => j.job_id)).not.toContain(mine);
      const own = await call(s.url, "GET", `/v1/jobs/history?from=2000-01-01&to=${today}&limit=5`, key);
      expect(own.body.total as number).toBeGreaterThanOrEqual(1);
    });
  });
});

describe("rate limits", () => {
  it("enforces the per-minute limit with 429, Retry-After and RateLimit headers, then resets", async () => {
    const s = await startCoordinator(
      { "limits.requests_per_minute": 3, "limits.minute_window": "2s", "limits.requests_per_hour": 100 },
      { clock: { now: Date.parse("2026-05-01T00:00:00Z") } },
    );
    const key = await clientKey(s.coordinator);
    const other = await clientKey(s.coordinator, "other");
    const first = await call(s.url, "GET", "/v1/jobs", key);
    expect(first.status).toBe(200);
    expect(first.headers.get("ratelimit-limit")).toBe("3");
    expect(first.headers.get("ratelimit-remaining")).toBe("2");
    expect(Number(first.headers.get("ratelimit-reset"))).toBeGreaterThan(0);
    expect((await call(s.url, "GET", "/v1/jobs", key)).status).toBe(200);
    expect((await call(s.url, "POST", "/v1/jobs", key, SUBMIT)).status).toBe(201);
    const limited = await call(s.url, "GET", "/v1/jobs", key);
    expectProblem(limited, 429, "rate_limited");
    const retry = Number(limited.headers.get("retry-after"));
    expect(retry).toBeGreaterThanOrEqual(1);
    expect(retry).toBeLessThanOrEqual(2);
    expect(limited.headers.get("ratelimit-remaining")).toBe("0");
    // Per key: another key is unaffected.
    expect((await call(s.url, "GET", "/v1/jobs", other)).status).toBe(200);
    // Health checks are not limited.
    expect((await call(s.url, "GET", "/healthz", undefined)).status).toBe(200);
    s.clock.now += 2001;
    expect((await call(s.url, "GET", "/v1/jobs", key)).status).toBe(200);
  });

  it("enforces the per-hour limit across short windows", async () => {
    const s = await startCoordinator(
      { "limits.requests_per_minute": 2, "limits.minute_window": "1s", "limits.requests_per_hour": 5, "limits.hour_window": "10s" },
      { clock: { now: Date.parse("2026-05-01T00:00:00Z") } },
    );
    const key = await clientKey(s.coordinator);
    let ok = 0;
    for (let i = 0; i < 3; i++) {
      for (let j = 0; j < 2; j++) if ((await call(s.url, "GET", "/v1/jobs", key)).status === 200) ok++;
      s.clock.now += 1001;
    }
    expect(ok).toBe(5);
    const limited = await call(s.url, "GET", "/v1/jobs", key);
    expectProblem(limited, 429, "rate_limited");
    expect(limited.headers.get("ratelimit-limit")).toBe("5");
    expect(Number(limited.headers.get("retry-after"))).toBeGreaterThan(1);
    s.clock.now += 10_001;
    expect((await call(s.url, "GET", "/v1/jobs", key)).status).toBe(200);
  });
});

describe("restart", () => {
  it("keeps every accepted job unchanged across a stop and a start on the same data dir", async () => {
    const first = await startCoordinator();
    const key = await clientKey(first.coordinator);
    const ids: string[] = [];
    for (let i = 0; i < 4; i++) ids.push(await submit(first.url, key, { ...SUBMIT, model: `restart-${i}`, priority: i % 2 === 0 ? "high" : "low" }));
    await complete(first.coordinator, ids[0]!, "kept output");
    await call(first.url, "DELETE", `/v1/jobs/${ids[1]!}`, key);
    const idem = await call(first.url, "POST", "/v1/jobs", key, SUBMIT, { "idempotency-key": "restart-key" });
    ids.push(idem.body.job_id as string);
    const before = await Promise.all(ids.map(async (id) => (await call(first.url, "GET", `/v1/jobs/${id}`, key)).body));
    const dl = (await call(first.url, "GET", `/v1/jobs/${ids[0]!}/download`, key)).body;
    await first.coordinator.stop();
    await first.coordinator.stop(); // idempotent

    const second = await startCoordinator({}, { dir: first.dir });
    const after = await Promise.all(ids.map(async (id) => (await call(second.url, "GET", `/v1/jobs/${id}`, key)).body));
    expect(after).toEqual(before);
    expect((await call(second.url, "GET", `/v1/jobs/${ids[0]!}/download`, key)).body).toEqual(dl);
    // The idempotency key still maps to the same job.
    const retried = await call(second.url, "POST", "/v1/jobs", key, SUBMIT, { "idempotency-key": "restart-key" });
    expect(retried.body.job_id).toBe(idem.body.job_id);
    expect((await call(second.url, "GET", "/v1/jobs?limit=100", key)).body.total).toBe(5);
  });
});

describe("storage faults", () => {
  it("answers 503 with Retry-After, not 500, while the database is locked, and recovers", async () => {
    const s = await startCoordinator();
    const key = await clientKey(s.coordinator);
    const queued = await submit(s.url, key);
    // Another process holding the write lock (e.g. a long `aitbc keys` run or a backup).
    const other = new Database(databasePath(s.dir));
    other.exec("BEGIN EXCLUSIVE");
    try {
      const a = await call(s.url, "POST", "/v1/jobs", key, SUBMIT);
      expectProblem(a, 503, "unavailable");
      expect(Number(a.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
      expect(a.body.retryable).toBe(true);
    } finally {
      other.exec("ROLLBACK");
      other.close();
    }
    expect((await call(s.url, "GET", `/v1/jobs/${queued}`, key)).body.status).toBe("queued");
    await submit(s.url, key);
  });
});

describe("our own faults", () => {
  it("answers 500 as a problem without internals when a committed result's file is gone", async () => {
    const s = await startCoordinator();
    const key = await clientKey(s.coordinator);
    const id = await submit(s.url, key);
    await complete(s.coordinator, id, "soon lost");
    const job = await s.coordinator.store.getJobById(id);
    unlinkSync(path.join(s.dir, "results", job!.result!.location));
    const a = await call(s.url, "GET", `/v1/jobs/${id}/download`, key);
    expectProblem(a, 500, "internal");
    expect(a.text).not.toContain(s.dir); // no file paths leak
    // The server keeps serving.
    expect((await call(s.url, "GET", `/v1/jobs/${id}`, key)).status).toBe(200);
  });
});
