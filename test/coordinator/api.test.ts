import { createHash } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FormatRegistry } from "@sinclair/typebox";
import { Value } from "@sinclair/typebox/value";
import { GENERATION_DEFAULTS } from "../../src/protocol/generation.js";
import { JobStatusSchema } from "../../src/protocol/jobs.js";
import { expectProblem, startApi, submit, uniqueModel, type ApiHarness } from "./api-harness.js";

/**
 * The client REST API (spec/client-api-reference.md) against a real Coordinator: a real SQLite
 * file, a real socket, global fetch. Jobs reach running/completed through the store's miner
 * verbs, so no miner process is involved.
 */
let h: ApiHarness & { key: string };
let other: string;

beforeAll(async () => {
  h = await startApi({
    "limits.requests_per_minute": 100_000,
    "limits.requests_per_hour": 100_000,
    "limits.max_page_size": 5,
    "limits.max_file_size": 1024,
    "server.body_limit": 4096,
    "limits.max_timeout_seconds": 7200,
    tenants: { acme: { s3_buckets: ["acme-out"] } },
  });
  other = (await h.newKey("globex")).key;
});
afterAll(() => h.stop());

const SEED_BODY = {
  model: "gpt2",
  input: "Once upon a time",
  output_config: { destination: "local", format: "json" },
  requirements: { gpu_type: "v100", gpu_count: 1, min_vram_gb: 16 },
  priority: "normal",
  timeout_seconds: 3600,
};

describe("POST /v1/jobs", () => {
  it("accepts the reference body: 201 with job_id, estimated_cost and estimated_time_seconds", async () => {
    const res = await h.call("POST", "/v1/jobs", { json: SEED_BODY });
    expect(res.status).toBe(201);
    expect(res.headers.get("content-type")).toMatch(/^application\/json/);
    const body = (await res.json()) as Record<string, unknown>;
    expect(body.job_id).toMatch(/^job_[A-Za-z0-9]+$/);
    expect(typeof body.estimated_cost).toBe("number");
    expect(body.estimated_cost as number).toBeGreaterThan(0);
    expect(typeof body.estimated_time_seconds).toBe("number");
    expect(body.estimated_time_seconds as number).toBeGreaterThan(0);
    // Committed before the answer: the store has it.
    expect((await h.coordinator.store.getJobById(body.job_id as string))?.status).toBe("queued");

    const status = (await (await h.call("GET", `/v1/jobs/${body.job_id as string}`)).json()) as Record<string, unknown>;
    expect(status).toMatchObject({
      job_id: body.job_id,
      status: "queued",
      model: "gpt2",
      priority: "normal",
      timeout_seconds: 3600,
      requirements: SEED_BODY.requirements,
      output_config: SEED_BODY.output_config,
    });
  });

  it("fills parameter defaults, keeps the ones given, and picks a seed", async () => {
    const id = await submit(h, { parameters: { temperature: 0, max_new_tokens: 7, stop: ["\n"] } });
    const job = (await (await h.call("GET", `/v1/jobs/${id}`)).json()) as {
      parameters: Record<string, unknown>;
      timeout_seconds: number;
      output_config: unknown;
      priority: string;
    };
    expect(job.parameters).toMatchObject({
      temperature: 0,
      max_new_tokens: 7,
      stop: ["\n"],
      top_k: GENERATION_DEFAULTS.top_k,
      top_p: GENERATION_DEFAULTS.top_p,
      repetition_penalty: GENERATION_DEFAULTS.repetition_penalty,
    });
    expect(Number.isInteger(job.parameters.seed)).toBe(true);
    expect(job.output_config).toEqual({ destination: "local", format: "json" });
    expect(job.priority).toBe("normal");
    expect(job.timeout_seconds).toBe(3600);
    // A full parameter set, seed included, is kept exactly.
    const parameters = { max_new_tokens: 4, temperature: 0, top_k: 1, top_p: 0.5, repetition_penalty: 1.2, stop: ["\n"], seed: 1234 };
    const given = await submit(h, { parameters });
    expect(((await (await h.call("GET", `/v1/jobs/${given}`)).json()) as { parameters: unknown }).parameters).toEqual(parameters);
  });

  it.each([
    ["parameters.temperature", { parameters: { temperature: 2.5 } }],
    ["parameters.max_new_tokens", { parameters: { max_new_tokens: 0 } }],
    ["parameters.max_new_tokens", { parameters: { max_new_tokens: 4097 } }],
    ["parameters.top_p", { parameters: { top_p: 0 } }],
    ["parameters.top_k", { parameters: { top_k: 1.5 } }],
    ["parameters.stop", { parameters: { stop: ["a", "b", "c", "d", "e", "f", "g", "h", "i"] } }],
    ["requirements.gpu_count", { requirements: { gpu_count: 0 } }],
    ["priority", { priority: "urgent" }],
    ["timeout_seconds", { timeout_seconds: 0 }],
    ["output_config.format", { output_config: { format: "xml" } }],
    ["model", { model: "" }],
    ["input", { input: "" }],
  ])("refuses %s out of bounds with 422 naming the field", async (field, extra) => {
    const res = await h.call("POST", "/v1/jobs", { json: { model: "gpt2", input: "x", ...extra } });
    const p = await expectProblem(res, 422, "validation_failed");
    expect(JSON.stringify([p.detail, p.errors])).toContain(field.replaceAll(".", "/"));
  });

  it("refuses timeout_seconds above limits.max_timeout_seconds with 422 naming the field", async () => {
    const p = await expectProblem(await h.call("POST", "/v1/jobs", { json: { model: "gpt2", input: "x", timeout_seconds: 7201 } }), 422);
    expect(p.field).toBe("timeout_seconds");
  });

  it("refuses a missing model or input and unknown fields (top level and nested) with 422 naming them", async () => {
    await expectProblem(await h.call("POST", "/v1/jobs", { json: { input: "x" } }), 422, "validation_failed");
    await expectProblem(await h.call("POST", "/v1/jobs", { json: { model: "gpt2" } }), 422, "validation_failed");
    const p = await expectProblem(await h.call("POST", "/v1/jobs", { json: { model: "gpt2", input: "x", colour: "red" } }), 422);
    expect(p.detail).toContain("colour");
    const nested = await expectProblem(await h.call("POST", "/v1/jobs", { json: { model: "gpt2", input: "x", parameters: { temp: 1 } } }), 422);
    expect(nested.detail).toContain("parameters/temp");
    await expectProblem(await h.call("POST", "/v1/jobs", { json: { model: "gpt2", input: "x", requirements: { gpu: "a100" } } }), 422);
    await expectProblem(await h.call("POST", "/v1/jobs", { json: { model: "gpt2", input: "x", output_config: { dest: "local" } } }), 422);
    await expectProblem(await h.call("POST", "/v1/jobs", { json: ["gpt2"] }), 422);
  });

  it("answers malformed JSON with 400, a wrong content type with 415, an oversized body with 413", async () => {
    const json = { "content-type": "application/json" };
    await expectProblem(await h.call("POST", "/v1/jobs", { body: '{"model": "gpt2",', headers: json }), 400, "malformed_json");
    await expectProblem(await h.call("POST", "/v1/jobs", { body: "", headers: json }), 400);
    const form = { "content-type": "application/x-www-form-urlencoded" };
    await expectProblem(await h.call("POST", "/v1/jobs", { body: "model=gpt2", headers: form }), 415, "unsupported_media_type");
    await expectProblem(await h.call("POST", "/v1/jobs", { json: { model: "gpt2", input: "x".repeat(5000) } }), 413, "payload_too_large");
  });

  it("takes the input as a file_id from POST /v1/files", async () => {
    const up = await h.call("POST", "/v1/files", { body: "The prompt in a file ✓", headers: { "content-type": "text/plain; charset=utf-8" } });
    expect(up.status).toBe(201);
    const file = (await up.json()) as { file_id: string; bytes: number; sha256: string; created_at: string };
    expect(file.file_id).toMatch(/^file_/);
    expect(file.bytes).toBe(Buffer.byteLength("The prompt in a file ✓"));
    expect(file.sha256).toMatch(/^[0-9a-f]{64}$/);
    const id = await submit(h, { input: file.file_id });
    const job = await h.coordinator.store.getJobById(id);
    expect(job?.input).toBe("The prompt in a file ✓");
    expect(job?.inputFileId).toBe(file.file_id);
  });

  it("refuses uploads that are not UTF-8, empty, too large or of another type, and unknown file ids", async () => {
    const text = { "content-type": "text/plain" };
    await expectProblem(await h.call("POST", "/v1/files", { body: new Uint8Array([0x68, 0xff, 0xfe, 0x69]), headers: text }), 422, "validation_failed");
    await expectProblem(await h.call("POST", "/v1/files", { body: "", headers: text }), 422);
    await expectProblem(await h.call("POST", "/v1/files", { body: "y".repeat(1025), headers: text }), 413, "payload_too_large");
    await expectProblem(await h.call("POST", "/v1/files", { json: { text: "hi" } }), 415, "unsupported_media_type");
    await expectProblem(await h.call("POST", "/v1/jobs", { json: { model: "gpt2", input: "file_doesnotexist" } }), 422, "file_not_found");
  });

  it("does not let one tenant use another tenant's file", async () => {
    const up = await h.call("POST", "/v1/files", { body: "secret", headers: { "content-type": "text/plain" } });
    const { file_id } = (await up.json()) as { file_id: string };
    await expectProblem(await h.call("POST", "/v1/jobs", { key: other, json: { model: "gpt2", input: file_id } }), 422, "file_not_found");
  });

  it("accepts s3:// destinations only for the tenant's listed buckets and refuses unsafe prefixes", async () => {
    const ok = await h.call("POST", "/v1/jobs", { json: { model: uniqueModel(), input: "x", output_config: { destination: "s3://acme-out/runs/1" } } });
    expect(ok.status).toBe(201);
    const to = (destination: string, key?: string) =>
      h.call("POST", "/v1/jobs", { json: { model: "gpt2", input: "x", output_config: { destination } }, ...(key === undefined ? {} : { key }) });
    await expectProblem(await to("s3://other-bucket/x"), 422, "s3_bucket_not_allowed");
    // Same bucket, other tenant: not listed for globex.
    await expectProblem(await to("s3://acme-out/x", other), 422, "s3_bucket_not_allowed");
    for (const destination of ["s3://acme-out/../etc", "s3://acme-out/a/../../b", "ftp://acme-out/x", "s3://"]) {
      const p = await expectProblem(await to(destination), 422);
      expect(p.field).toBe("output_config.destination");
    }
  });

  it("honours Idempotency-Key: same key and body → same job (200), same key other body → 409", async () => {
    const body = { model: uniqueModel(), input: "idempotent" };
    const headers = { "idempotency-key": "order-42" };
    const first = await h.call("POST", "/v1/jobs", { json: body, headers });
    expect(first.status).toBe(201);
    const a = (await first.json()) as { job_id: string };
    const again = await h.call("POST", "/v1/jobs", { json: body, headers });
    expect(again.status).toBe(200);
    expect(((await again.json()) as { job_id: string }).job_id).toBe(a.job_id);
    const p = await expectProblem(await h.call("POST", "/v1/jobs", { json: { ...body, input: "changed" }, headers }), 409, "idempotency_key_reused");
    expect(p.job_id).toBe(a.job_id);
    // The same body serialised in another key order (nested objects too) is the same request.
    const nested = { ...body, parameters: { max_new_tokens: 8, seed: 3 } };
    const keyed = { "idempotency-key": "order-43" };
    const n1 = (await (await h.call("POST", "/v1/jobs", { json: nested, headers: keyed })).json()) as { job_id: string };
    const reordered = { parameters: { seed: 3, max_new_tokens: 8 }, input: nested.input, model: nested.model };
    expect(JSON.stringify(reordered)).not.toBe(JSON.stringify(nested));
    const n2 = await h.call("POST", "/v1/jobs", { json: reordered, headers: keyed });
    expect(n2.status).toBe(200);
    expect(((await n2.json()) as { job_id: string }).job_id).toBe(n1.job_id);
    await expectProblem(await h.call("POST", "/v1/jobs", { json: { ...nested, parameters: { max_new_tokens: 8, seed: 4 } }, headers: keyed }), 409, "idempotency_key_reused");
    // The same key from another tenant is another key.
    const theirs = await h.call("POST", "/v1/jobs", { key: other, json: body, headers });
    expect(theirs.status).toBe(201);
    expect(((await theirs.json()) as { job_id: string }).job_id).not.toBe(a.job_id);
  });
});

describe("GET /v1/jobs/{id}", () => {
  it("shows the spec's fields, and eligible_miners and queue_position while queued", async () => {
    const model = uniqueModel();
    const first = await submit(h, { model });
    const second = await submit(h, { model });
    const res = await h.call("GET", `/v1/jobs/${second}`);
    expect(res.status).toBe(200);
    const job = (await res.json()) as Record<string, unknown>;
    for (const k of ["job_id", "status", "progress", "miner_id", "created_at", "started_at", "completed_at", "result"]) expect(job).toHaveProperty(k);
    expect(job).toMatchObject({
      job_id: second,
      status: "queued",
      progress: 0,
      miner_id: null,
      started_at: null,
      completed_at: null,
      result: null,
      eligible_miners: 0,
    });
    expect(new Date(job.created_at as string).toISOString()).toBe(job.created_at);
    const firstView = (await (await h.call("GET", `/v1/jobs/${first}`)).json()) as { queue_position: number };
    expect(job.queue_position as number).toBeGreaterThan(firstView.queue_position);
  });

  it("shows miner, started_at and progress while running, and the result once completed", async () => {
    const id = await submit(h);
    await h.run(id);
    const running = (await (await h.call("GET", `/v1/jobs/${id}`)).json()) as Record<string, unknown>;
    expect(running).toMatchObject({ status: "running", miner_id: "miner_test", completed_at: null, result: null });
    expect(running.started_at).not.toBeNull();
    expect(running).not.toHaveProperty("queue_position");

    const id2 = await submit(h);
    await h.complete(id2, "generated text");
    const done = (await (await h.call("GET", `/v1/jobs/${id2}`)).json()) as Record<string, unknown>;
    expect(done).toMatchObject({
      status: "completed",
      progress: 100,
      result: {
        download_url: `/v1/jobs/${id2}/download`,
        format: "json",
        output_bytes: 14,
        output_sha256: createHash("sha256").update("generated text").digest("hex"),
        available: true,
        finish_reason: "length",
        usage: { prompt_tokens: 3, completion_tokens: 5 },
      },
    });
    expect(done.completed_at).not.toBeNull();
  });

  it("answers exactly the documented shape in every state (the route writes it with JSON.stringify, not the schema's serializer)", async () => {
    const queued = await submit(h, { model: uniqueModel() });
    const running = await submit(h);
    await h.run(running);
    const completed = await submit(h);
    await h.complete(completed, "shaped");
    const failed = await submit(h);
    const failRef = await h.run(failed);
    expect(await h.coordinator.store.failAttempt(failRef, { code: "engine_error", message: "broke", retryable: false }, Date.now(), 0)).toBe("failed");
    const seen: string[] = [];
    for (const id of [queued, running, completed, failed]) {
      const body = (await (await h.call("GET", `/v1/jobs/${id}`)).json()) as Record<string, unknown>;
      seen.push(body.status as string);
      expect([...Value.Errors(JobStatusSchema, body)].map((e) => `${e.path}: ${e.message}`)).toEqual([]);
      expect(undocumentedKeys(JobStatusSchema, body)).toEqual([]);
    }
    expect(seen).toEqual(["queued", "running", "completed", "failed"]);
  });

  it("answers 404 problem+json for an unknown, a malformed and another tenant's job id", async () => {
    await expectProblem(await h.call("GET", "/v1/jobs/job_doesnotexist"), 404, "job_not_found");
    await expectProblem(await h.call("GET", "/v1/jobs/not-a-job-id"), 404, "job_not_found");
    await expectProblem(await h.call("GET", `/v1/jobs/job_${"a".repeat(80)}`), 404);
    const mine = await submit(h);
    await expectProblem(await h.call("GET", `/v1/jobs/${mine}`, { key: other }), 404, "job_not_found");
  });
});

interface ListPage {
  jobs: { job_id: string; status: string; model: string }[];
  total: number;
  has_more: boolean;
  next_cursor: string | null;
}

/** Follows next_cursor from the first page to the last; returns every id seen and the page count. */
async function pageThrough(route: string, key: string, expectTotal: number): Promise<{ ids: string[]; pages: number }> {
  const ids: string[] = [];
  let cursor: string | null = null;
  let pages = 0;
  do {
    const q: string = cursor === null ? "" : `&cursor=${encodeURIComponent(cursor)}`;
    const page = (await (await h.call("GET", `${route}${q}`, { key })).json()) as ListPage;
    expect(page.total).toBe(expectTotal);
    expect(page.has_more).toBe(page.next_cursor !== null);
    ids.push(...page.jobs.map((j) => j.job_id));
    cursor = page.next_cursor;
    pages += 1;
  } while (cursor !== null && pages < 20);
  return { ids, pages };
}

describe("GET /v1/jobs (list)", () => {
  it("filters by status, reports total and has_more, and pages through everything exactly once", async () => {
    const t = await h.newKey("lister");
    const ids: string[] = [];
    for (let i = 0; i < 12; i++) ids.push(await submit(h, {}, t.key));
    for (const id of ids.slice(0, 3)) await h.run(id);

    const running = (await (await h.call("GET", "/v1/jobs?status=running&limit=10", { key: t.key })).json()) as ListPage;
    expect(running.total).toBe(3);
    expect(running.has_more).toBe(false);
    expect(running.next_cursor).toBeNull();
    expect(running.jobs.map((j) => j.job_id).sort()).toEqual(ids.slice(0, 3).sort());
    for (const j of running.jobs) {
      expect(j.status).toBe("running");
      expect(j.model).toMatch(/^gpt2-t/);
    }
    const queued = (await (await h.call("GET", "/v1/jobs?status=queued&limit=5", { key: t.key })).json()) as ListPage;
    expect(queued.total).toBe(9);
    expect(queued.jobs.every((j) => j.status === "queued")).toBe(true);

    const all = await pageThrough("/v1/jobs?limit=4", t.key, 12);
    expect(all.pages).toBe(3);
    expect(all.ids.slice().sort()).toEqual(ids.slice().sort());
  });

  it("caps limit at limits.max_page_size", async () => {
    const t = await h.newKey("capped");
    for (let i = 0; i < 7; i++) await submit(h, {}, t.key);
    const page = (await (await h.call("GET", "/v1/jobs?limit=1000", { key: t.key })).json()) as ListPage;
    expect(page.jobs).toHaveLength(5);
    expect(page.has_more).toBe(true);
    expect(page.total).toBe(7);
  });

  it("refuses a bad status, limit or cursor with 422", async () => {
    await expectProblem(await h.call("GET", "/v1/jobs?status=sleeping"), 422, "validation_failed");
    await expectProblem(await h.call("GET", "/v1/jobs?limit=0"), 422);
    await expectProblem(await h.call("GET", "/v1/jobs?limit=ten"), 422);
    const p = await expectProblem(await h.call("GET", "/v1/jobs?cursor=garbage!!"), 422);
    expect(p.field).toBe("cursor");
    await expectProblem(await h.call("GET", "/v1/jobs?sort=asc"), 422);
  });

  it("answers an empty first page", async () => {
    const t = await h.newKey("empty");
    expect(await (await h.call("GET", "/v1/jobs", { key: t.key })).json()).toEqual({ jobs: [], total: 0, has_more: false, next_cursor: null });
  });

  it("lists only the caller's jobs", async () => {
    const t = await h.newKey("isolated-list");
    const mine = await submit(h, {}, t.key);
    const theirs = (await (await h.call("GET", "/v1/jobs?limit=5", { key: other })).json()) as ListPage;
    expect(theirs.jobs.map((j) => j.job_id)).not.toContain(mine);
    const own = (await (await h.call("GET", "/v1/jobs", { key: t.key })).json()) as ListPage;
    expect(own).toMatchObject({ total: 1, jobs: [{ job_id: mine }] });
  });
});

describe("DELETE /v1/jobs/{id}", () => {
  it("cancels a queued job (200), requests cancel of a running one (202), refuses a finished one (409)", async () => {
    const queued = await submit(h);
    const r1 = await h.call("DELETE", `/v1/jobs/${queued}`);
    expect(r1.status).toBe(200);
    expect(await r1.json()).toMatchObject({ job_id: queued, status: "cancelled" });
    expect(((await (await h.call("GET", `/v1/jobs/${queued}`)).json()) as { status: string }).status).toBe("cancelled");

    const running = await submit(h);
    await h.run(running);
    const r2 = await h.call("DELETE", `/v1/jobs/${running}`);
    expect(r2.status).toBe(202);
    expect(await r2.json()).toMatchObject({ job_id: running, status: "running", cancel_requested: true });

    const done = await submit(h);
    await h.complete(done, "out");
    const p = await expectProblem(await h.call("DELETE", `/v1/jobs/${done}`), 409, "job_finished");
    expect(p.state).toBe("completed");
    const p2 = await expectProblem(await h.call("DELETE", `/v1/jobs/${queued}`), 409, "job_finished");
    expect(p2.state).toBe("cancelled");
  });

  it("answers 404 for another tenant's job and leaves it alone", async () => {
    const id = await submit(h);
    await expectProblem(await h.call("DELETE", `/v1/jobs/${id}`, { key: other }), 404, "job_not_found");
    await expectProblem(await h.call("DELETE", "/v1/jobs/job_nope"), 404);
    expect(((await (await h.call("GET", `/v1/jobs/${id}`)).json()) as { status: string }).status).toBe("queued");
  });
});

describe("GET /v1/jobs/{id}/download", () => {
  it("returns a completed job's output as JSON with a Content-Disposition filename", async () => {
    const id = await submit(h);
    await h.complete(id, "The answer is 42.");
    const res = await h.call("GET", `/v1/jobs/${id}/download`);
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toMatch(/^application\/json/);
    expect(res.headers.get("content-disposition")).toBe(`attachment; filename="${id}.json"`);
    const body = (await res.json()) as Record<string, unknown>;
    expect(body).toMatchObject({ job_id: id, output: "The answer is 42.", finish_reason: "length", usage: { prompt_tokens: 3, completion_tokens: 5 } });
  });

  it("returns text/plain for output_config.format text", async () => {
    const id = await submit(h, { output_config: { format: "text" } });
    await h.complete(id, "plain ✓ text");
    const res = await h.call("GET", `/v1/jobs/${id}/download`);
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toMatch(/^text\/plain/);
    expect(res.headers.get("content-disposition")).toContain(`${id}.txt`);
    expect(await res.text()).toBe("plain ✓ text");
  });

  it("answers 409 job_not_completed before completion and 404 for another tenant", async () => {
    const id = await submit(h);
    const p = await expectProblem(await h.call("GET", `/v1/jobs/${id}/download`), 409, "job_not_completed");
    expect(p.state).toBe("queued");
    await h.complete(id, "done");
    await expectProblem(await h.call("GET", `/v1/jobs/${id}/download`, { key: other }), 404, "job_not_found");
  });
});

describe("GET /v1/jobs/history", () => {
  it("lists only finished jobs in the range, day bounds inclusive, and pages", async () => {
    const t = await h.newKey("historian");
    const at = async (iso: string, finish: "complete" | "cancel" | "none") => {
      const id = await submit(h, {}, t.key);
      if (finish === "complete") await h.complete(id, "x", Date.parse(iso));
      // A queued job cancelled at a given time: through the store, which takes the clock.
      if (finish === "cancel") await h.coordinator.store.requestCancel("historian", id, Date.parse(iso));
      return id;
    };
    const first = await at("2026-01-01T00:00:00.000Z", "complete");
    const last = await at("2026-01-31T23:59:59.999Z", "complete");
    const mid = await at("2026-01-15T12:00:00.000Z", "cancel");
    const before = await at("2025-12-31T23:59:59.999Z", "complete");
    const after = await at("2026-02-01T00:00:00.000Z", "complete");
    await at("2026-01-10T00:00:00.000Z", "none"); // still queued: not history

    const res = await h.call("GET", "/v1/jobs/history?from=2026-01-01&to=2026-01-31", { key: t.key });
    expect(res.status).toBe(200);
    const page = (await res.json()) as ListPage;
    expect(page.total).toBe(3);
    expect(page.jobs.map((j) => j.job_id).sort()).toEqual([first, last, mid].sort());

    const all = await pageThrough("/v1/jobs/history?from=2025-12-01&to=2026-02-28&limit=2", t.key, 5);
    expect(all.pages).toBe(3);
    expect(all.ids.sort()).toEqual([first, last, mid, before, after].sort());

    // Another tenant sees none of it.
    const theirs = (await (await h.call("GET", "/v1/jobs/history?from=2025-01-01&to=2027-01-01", { key: other })).json()) as ListPage;
    expect(theirs.jobs.map((j) => j.job_id)).not.toContain(first);
  });

  it("is not read as a job id, and refuses bad ranges with 422", async () => {
    const ok = await h.call("GET", "/v1/jobs/history?from=2026-01-01&to=2026-01-01");
    expect(ok.status).toBe(200);
    expect(await ok.json()).toHaveProperty("jobs");
    const p = await expectProblem(await h.call("GET", "/v1/jobs/history?from=2026-02-01&to=2026-01-01"), 422);
    expect(p.field).toBe("from");
    for (const q of [
      "from=2026-13-01&to=2026-12-31",
      "from=2026-02-30&to=2026-03-01",
      "from=yesterday&to=2026-03-01",
      "from=2026-01-01",
      "to=2026-01-01",
      "",
      "from=2026-01-01&to=2026-01-31&cursor=zzz",
    ]) {
      await expectProblem(await h.call("GET", `/v1/jobs/history?${q}`), 422);
    }
  });
});

describe("public and unknown routes", () => {
  it("serves /healthz and /readyz without a key", async () => {
    const health = await h.call("GET", "/healthz", { key: null });
    expect(health.status).toBe(200);
    expect(await health.json()).toEqual({ status: "ok" });
    const ready = await h.call("GET", "/readyz", { key: null });
    expect(ready.status).toBe(200);
    expect(await ready.json()).toMatchObject({ status: "ready", miners: 0 });
  });

  it("serves a valid OpenAPI 3 document listing every /v1 path, and HTML docs", async () => {
    const res = await h.call("GET", "/openapi.json", { key: null });
    expect(res.status).toBe(200);
    const doc = (await res.json()) as { openapi: string; info: { title: string }; paths: Record<string, Record<string, unknown>> };
    expect(doc.openapi).toMatch(/^3\./);
    expect(doc.info.title).toBeTruthy();
    const paths = Object.keys(doc.paths);
    for (const p of ["/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/download", "/v1/jobs/history", "/v1/jobs/{job_id}/events", "/v1/files"]) {
      expect(paths).toContain(p);
    }
    expect(Object.keys(doc.paths["/v1/jobs"] ?? {})).toEqual(expect.arrayContaining(["get", "post"]));
    expect(Object.keys(doc.paths["/v1/jobs/{job_id}"] ?? {})).toEqual(expect.arrayContaining(["get", "delete"]));

    const docs = await fetch(`${h.url}/docs`, { redirect: "follow" });
    expect(docs.status).toBe(200);
    expect(docs.headers.get("content-type")).toMatch(/text\/html/);
    expect(await docs.text()).toMatch(/<html/i);
  });

  it("answers unknown routes and methods with 404 problem+json", async () => {
    await expectProblem(await h.call("GET", "/v1/nothing"), 404, "not_found");
    await expectProblem(await h.call("GET", "/nothing", { key: null }), 404, "not_found");
    await expectProblem(await h.call("PUT", "/v1/jobs"), 404);
    // The router's own refusals are problem+json too.
    await expectProblem(await h.call("GET", "/v1/jobs/%E0%A4%A"), 400, "bad_request");
  });
});

describe("authentication", () => {
  it("answers 401 without a key, with a bad key, with a revoked key and with a miner key", async () => {
    const none = await expectProblem(await h.call("GET", "/v1/jobs", { key: null }), 401, "unauthorized");
    expect(none.detail).toContain("required");
    await expectProblem(await h.call("GET", "/v1/jobs", { key: "aitbc_ck_notarealkey" }), 401, "unauthorized");
    await expectProblem(await h.call("GET", "/v1/jobs", { headers: { authorization: "Basic dXNlcjpwYXNz" }, key: null }), 401);

    const revoked = await h.newKey("acme");
    expect((await h.call("GET", "/v1/jobs", { key: revoked.key })).status).toBe(200);
    expect(await h.coordinator.store.revokeKey(revoked.id, Date.now())).toBe(true);
    await expectProblem(await h.call("GET", "/v1/jobs", { key: revoked.key }), 401, "unauthorized");

    const miner = await h.newKey("acme", "miner");
    expect(miner.key).toMatch(/^aitbc_mk_/);
    await expectProblem(await h.call("GET", "/v1/jobs", { key: miner.key }), 401, "unauthorized");
    await expectProblem(await h.call("POST", "/v1/jobs", { key: miner.key, json: { model: "gpt2", input: "x" } }), 401);
  });

  it("needs a key for a percent-encoded /v1 path too (the router decodes it to the same route)", async () => {
    await expectProblem(await h.call("GET", "/%761/jobs", { key: null }), 401, "unauthorized");
    await expectProblem(await h.call("POST", "/%76%31/jobs", { key: null, json: { model: "gpt2", input: "x" } }), 401, "unauthorized");
    expect((await h.call("GET", "/%761/jobs")).status).toBe(200);
  });

  it("says WWW-Authenticate: Bearer on a 401 and checks the key before the body", async () => {
    const res = await h.call("POST", "/v1/jobs", { key: null, body: "{not json", headers: { "content-type": "application/json" } });
    expect(res.headers.get("www-authenticate")).toMatch(/^Bearer/);
    await expectProblem(res, 401);
  });
});

// The times the API writes: ISO 8601 in UTC, as toISOString() gives them.
if (!FormatRegistry.Has("date-time")) FormatRegistry.Set("date-time", (v) => !Number.isNaN(Date.parse(v)) && new Date(v).toISOString() === v);

/** Paths in `value` that `schema` does not name (objects with `properties`; records and unknowns take any key). */
function undocumentedKeys(schema: unknown, value: unknown, at = ""): string[] {
  const s = schema as { anyOf?: unknown[]; properties?: Record<string, unknown>; items?: unknown };
  if (s.anyOf !== undefined) {
    const branch = s.anyOf.find((b) => Value.Check(b as Parameters<typeof Value.Check>[0], value));
    return branch === undefined ? [at] : undocumentedKeys(branch, value, at);
  }
  if (Array.isArray(value)) return s.items === undefined ? [] : value.flatMap((v, i) => undocumentedKeys(s.items, v, `${at}[${i}]`));
  if (typeof value !== "object" || value === null || s.properties === undefined) return [];
  const props = s.properties;
  return Object.entries(value).flatMap(([k, v]) => (k in props ? undocumentedKeys(props[k], v, `${at}.${k}`) : [`${at}.${k}`]));
}
