import Database from "better-sqlite3";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { databasePath } from "../../src/coordinator/coordinator.js";
import { startApi, type ApiHarness } from "../coordinator/api-harness.js";
import { destination, longString, numberLikeString, pathSafe, pctEncode, unicodeString, weirdNumber, weirdValue } from "./fuzz-arbitraries.js";
import { closeRawAgent, expectWellFormed, rawRequest, type RawResponse } from "./raw-http.js";

/**
 * Property-based fuzzing of every input of the client REST API against a real coordinator
 * (port 0, SQLite in a temp dir): bodies, raw bytes, content types, query strings, path ids,
 * headers and uploads. Every answer must be < 500, and every error RFC 9457 problem+json with a
 * string `code`. Afterwards the server still serves, and the store holds exactly the jobs and
 * files that were answered 201/200: nothing half-written by a refused request.
 */
let h: ApiHarness & { key: string };
let minerKey: string;
let revokedKey: string;
const acceptedJobs = new Set<string>();
const acceptedFiles = new Set<string>();
const tried: Record<string, number> = {};
const statuses = new Map<number, number>();

function count(property: string, res: RawResponse): void {
  tried[property] = (tried[property] ?? 0) + 1;
  statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
}

/** FUZZ_SCALE=10 for a deeper local run; FUZZ_SEED replays a reported seed. */
const SCALE = Number(process.env.FUZZ_SCALE ?? 1);
const RUNS = Object.fromEntries(Object.entries({ jobs: 300, raw: 200, bursts: 30, query: 200, paths: 200, headers: 150, files: 150 }).map(([k, n]) => [k, n * SCALE])) as Record<
  "jobs" | "raw" | "bursts" | "query" | "paths" | "headers" | "files",
  number
>;
const SEED = Number(process.env.FUZZ_SEED ?? Date.now() % 1_000_000);

beforeAll(async () => {
  h = await startApi({
    "limits.requests_per_minute": 1_000_000,
    "limits.requests_per_hour": 1_000_000,
    "limits.max_queued_jobs_per_tenant": 100_000,
    tenants: { acme: { s3_buckets: ["acme-out"] } },
  });
  minerKey = (await h.newKey("acme", "miner")).key;
  const revoked = await h.newKey("acme");
  await h.coordinator.store.revokeKey(revoked.id, Date.now());
  revokedKey = revoked.key;
});

afterAll(async () => {
  closeRawAgent();
  await h.stop();
});

const json = (key: string): Record<string, string> => ({ authorization: `Bearer ${key}`, "content-type": "application/json" });

/** A body the API accepts: every field within its documented bounds. */
const validBody = fc.record(
  {
    model: fc.constantFrom("gpt2", "tiny-gpt2", "org/model-1.5"),
    input: fc.oneof(fc.constantFrom("Hello", "Once upon a time"), unicodeString),
    output_config: fc.record(
      { destination: fc.constantFrom("local", "s3://acme-out/ok", "s3://acme-out/a/b/c", "s3://acme-out"), format: fc.constantFrom("json", "text") },
      { requiredKeys: [] },
    ),
    requirements: fc.record(
      { gpu_type: fc.constantFrom("v100", "rtx4090"), gpu_count: fc.integer({ min: 1, max: 64 }), min_vram_gb: fc.double({ min: 0, max: 4096, noNaN: true }) },
      { requiredKeys: [] },
    ),
    priority: fc.constantFrom("low", "normal", "high"),
    timeout_seconds: fc.integer({ min: 1, max: 86_400 }),
    parameters: fc.record(
      {
        max_new_tokens: fc.integer({ min: 1, max: 4096 }),
        temperature: fc.double({ min: 0, max: 2, noNaN: true }),
        top_k: fc.integer({ min: 0, max: 50_257 }),
        top_p: fc.double({ min: 0.01, max: 1, noNaN: true }),
        repetition_penalty: fc.double({ min: 0.1, max: 10, noNaN: true }),
        stop: fc.array(fc.constantFrom("\n", "END", "👩‍👩‍👧‍👦"), { maxLength: 8 }),
        seed: fc.integer({ min: 0, max: 2 ** 31 - 1 }),
      },
      { requiredKeys: [] },
    ),
  },
  { requiredKeys: ["model", "input"] },
);

/** One field replaced by a hostile value; `path` may also name an unknown field. */
const mutation = fc.oneof(
  fc.tuple(fc.constant(["model"]), fc.oneof(fc.constantFrom("../gpt2", "gpt2/../../etc", "-x", ".hidden", "a".repeat(129), "gpt2\u0000", "gpt2 ", "/abs", ""), unicodeString, weirdValue)),
  fc.tuple(
    fc.constant(["input"]),
    fc.oneof(longString, fc.constantFrom("", "file_abc", "file_", `file_${"a".repeat(64)}`, `file_${"a".repeat(65)}`, "file_../x", "FILE_abc"), weirdValue),
  ),
  fc.tuple(fc.constant(["output_config", "destination"]), destination),
  fc.tuple(fc.constant(["output_config", "format"]), fc.oneof(fc.constantFrom("xml", "JSON", ""), weirdValue)),
  fc.tuple(fc.constant(["output_config"]), weirdValue),
  fc.tuple(fc.constantFrom(["requirements", "gpu_type"], ["requirements", "gpu_count"], ["requirements", "min_vram_gb"], ["requirements"]), fc.oneof(weirdNumber, numberLikeString, weirdValue)),
  fc.tuple(fc.constant(["priority"]), fc.oneof(fc.constantFrom("urgent", "HIGH", ""), weirdValue)),
  fc.tuple(fc.constant(["timeout_seconds"]), fc.oneof(fc.integer({ min: -5, max: 200_000 }), weirdNumber, numberLikeString)),
  fc.tuple(
    fc.constantFrom(
      ["parameters", "max_new_tokens"],
      ["parameters", "temperature"],
      ["parameters", "top_k"],
      ["parameters", "top_p"],
      ["parameters", "repetition_penalty"],
      ["parameters", "seed"],
      ["parameters", "stop"],
      ["parameters", "extra"],
      ["parameters"],
    ),
    fc.oneof(weirdNumber, numberLikeString, fc.array(fc.oneof(unicodeString, fc.constant(""), longString), { maxLength: 10 }), weirdValue),
  ),
  // Unknown fields, including names that are special to JavaScript objects.
  fc.tuple(fc.constantFrom(["__proto__"], ["constructor"], ["prototype"], ["x"], [""], ["parameters", "__proto__"]), weirdValue),
);

function applyMutation(body: Record<string, unknown>, [keys, value]: readonly [readonly string[], unknown]): Record<string, unknown> {
  let target: Record<string, unknown> = body;
  for (const k of keys.slice(0, -1)) {
    const next = target[k];
    if (typeof next !== "object" || next === null || Array.isArray(next)) target[k] = {};
    target = target[k] as Record<string, unknown>;
  }
  // defineProperty: a plain assignment to "__proto__" would set the prototype, not a field.
  Object.defineProperty(target, keys[keys.length - 1]!, { value, enumerable: true, configurable: true, writable: true });
  return body;
}

const jobBody = fc
  .tuple(validBody, fc.array(mutation, { maxLength: 2 }))
  .map(([body, muts]) => muts.reduce((b, m) => applyMutation(b, m), structuredClone(body) as Record<string, unknown>));

/** A job body or something that is not one at all: arrays, scalars, nested junk. */
const submitPayload = fc.oneof(
  { weight: 6, arbitrary: jobBody },
  { weight: 1, arbitrary: fc.array(jobBody, { maxLength: 3 }) },
  { weight: 1, arbitrary: fc.jsonValue({ maxDepth: 4 }) },
);

/** An s3 prefix the server accepted must not be able to escape (no dot segments, controls or backslashes). */
function expectSafeDestination(body: unknown): void {
  const dest = (body as { output_config?: { destination?: unknown } } | null)?.output_config?.destination;
  if (typeof dest !== "string" || dest === "local") return;
  expect(dest).toMatch(/^s3:\/\/acme-out(\/|$)/);
  const prefix = dest.slice("s3://acme-out".length + 1);
  expect(prefix.split("/")).not.toContain("..");
  expect(prefix.split("/")).not.toContain(".");
  expect(prefix).not.toMatch(/[\0-\x1f\\]/);
}

async function trackSubmit(res: RawResponse): Promise<void> {
  if (res.status === 200 || res.status === 201) {
    const id = (JSON.parse(res.text) as { job_id: string }).job_id;
    expect(id).toMatch(/^job_[A-Za-z0-9]+$/);
    acceptedJobs.add(id);
  }
  return Promise.resolve();
}

describe("client REST API under fuzzed input", { timeout: 60_000 * SCALE }, () => {
  it("POST /v1/jobs: any JSON body is answered < 500, errors as problem+json; accepted s3 prefixes are safe", async () => {
    await fc.assert(
      fc.asyncProperty(submitPayload, fc.oneof({ weight: 6, arbitrary: fc.constant(undefined) }, { weight: 1, arbitrary: fc.constantFrom("k1", "k2", "k3") }), async (payload, idem) => {
        const text = JSON.stringify(payload) ?? "null";
        const res = await rawRequest(h.url, "POST", "/v1/jobs", { ...json(h.key), ...(idem === undefined ? {} : { "idempotency-key": idem }) }, text);
        count("POST /v1/jobs JSON bodies", res);
        expectWellFormed(res, `POST /v1/jobs ${text.slice(0, 200)}`);
        await trackSubmit(res);
        if (res.status === 201) expectSafeDestination(payload);
      }),
      { numRuns: RUNS.jobs, seed: SEED },
    );
  });

  it("POST /v1/jobs: raw malformed bytes, any Content-Type, odd Idempotency-Key values", async () => {
    const valid = JSON.stringify({ model: "gpt2", input: "Hello" });
    const rawBody = fc.oneof(
      fc.uint8Array({ maxLength: 512 }).map((a) => Buffer.from(a)),
      fc.nat({ max: valid.length }).map((n) => Buffer.from(valid.slice(0, n))),
      fc.tuple(fc.nat({ max: valid.length }), fc.uint8Array({ minLength: 1, maxLength: 4 })).map(([n, b]) =>
        Buffer.concat([Buffer.from(valid.slice(0, n)), Buffer.from(b), Buffer.from(valid.slice(n))]),
      ),
      fc.constantFrom(
        "{",
        '{"model":',
        "[1,2",
        "NaN",
        "{'model':'gpt2'}",
        '{"model":"gpt2","input":"\\ud800\\"}',
        '{"model":"gpt2","input":"\\uZZZZ"}',
        '{"model":"gpt2","input":"x",}',
        '{"model":"gpt2","input":"x"}{"a":1}',
        '{"__proto__":{"x":1},"model":"gpt2","input":"x"}',
        '{"model":"gpt2","input":"x","constructor":{"prototype":{"x":1}}}',
        `${"[".repeat(5000)}${"]".repeat(5000)}`,
        '{"model":"gpt2","input":"x","timeout_seconds":1e999}',
        "\ufeff" + valid,
        "",
      ).map((s) => Buffer.from(s)),
      fc.constant(Buffer.from([0xff, 0xfe, 0x7b, 0x00, 0x7d, 0x00])),
    );
    const contentType = fc.oneof(
      { weight: 3, arbitrary: fc.constant("application/json") },
      {
        weight: 2,
        arbitrary: fc.constantFrom(
          "application/json; charset=utf-8",
          "application/json; charset=latin1",
          "application/json; charset=utf-16",
          "application/JSON",
          "application/json;;",
          "application/problem+json",
          "application/vnd.api+json",
          "text/json",
          "text/plain",
          "application/octet-stream",
          "application/x-www-form-urlencoded",
          "multipart/form-data; boundary=x",
          "*/*",
          "json",
          ";",
          "",
        ),
      },
    );
    const idem = fc.option(
      fc.oneof(
        fc.constantFrom("", " ", "a".repeat(255), "a".repeat(256), "x".repeat(4000), "\t", "é\xff", "k1"),
        fc.string({ maxLength: 40 }).map((s) => s.replace(/[^\x20-\x7e]/g, "")),
      ),
      { nil: undefined },
    );
    await fc.assert(
      fc.asyncProperty(rawBody, contentType, idem, async (body, ct, key) => {
        const headers: Record<string, string> = { authorization: `Bearer ${h.key}`, ...(ct === "" ? {} : { "content-type": ct }) };
        if (key !== undefined) headers["idempotency-key"] = key;
        const res = await rawRequest(h.url, "POST", "/v1/jobs", headers, body);
        count("POST /v1/jobs raw bytes/content types", res);
        expectWellFormed(res, `POST /v1/jobs [${ct}] ${body.toString("latin1").slice(0, 120)}`);
        await trackSubmit(res);
      }),
      { numRuns: RUNS.raw, seed: SEED },
    );
  });

  it("concurrent submissions with one Idempotency-Key: exactly one job, every 200/201 names it, the rest 409", async () => {
    let n = 0;
    await fc.assert(
      fc.asyncProperty(validBody, fc.array(fc.boolean(), { minLength: 2, maxLength: 8 }), async (body, sameBody) => {
        n += 1;
        const key = `burst-${SEED}-${n}`;
        const other = { ...body, input: `${String(body.input)} (changed)` };
        const results = await Promise.all(
          sameBody.map((same) => rawRequest(h.url, "POST", "/v1/jobs", { ...json(h.key), "idempotency-key": key }, JSON.stringify(same ? body : other))),
        );
        for (const res of results) {
          count("concurrent idempotent submissions", res);
          expectWellFormed(res, `burst ${key}`);
          expect([200, 201, 409]).toContain(res.status);
        }
        expect(results.filter((r) => r.status === 201)).toHaveLength(1);
        const ids = new Set(results.filter((r) => r.status < 300).map((r) => (JSON.parse(r.text) as { job_id: string }).job_id));
        expect(ids.size).toBe(1);
        for (const r of results) await trackSubmit(r);
      }),
      { numRuns: RUNS.bursts, seed: SEED },
    );
  });

  it("GET /v1/jobs, /v1/jobs/history, /events: random query strings; lists show only this tenant's accepted jobs", async () => {
    const key = fc.constantFrom("status", "limit", "cursor", "from", "to", "after", "", "x", "limit[]", "__proto__", "constructor", "STATUS");
    const value = fc.oneof(
      fc.constantFrom("-1", "0", "1", "5", "1e309", "99999999999999999999", "NaN", "abc", "true", "queued", "completed", "QUEUED", ""),
      fc.constantFrom("2024-02-30", "2024-13-01", "9999-12-31", "0000-01-01", "2024-01-01", "2024-01-01T25:00:00Z", "2024-01-01T00:00:00+99:99", "2024-01-01T", "+275760-09-13"),
      fc.base64String({ maxLength: 80 }),
      fc.constantFrom("%", "%zz", "%00", "%ff", "a=b=c", "&&", "%26limit%3D1", "a".repeat(300)),
      unicodeString.map(pctEncode),
      fc.string({ maxLength: 20 }).map(pathSafe),
    );
    const route = fc.constantFrom("/v1/jobs", "/v1/jobs/history", "/v1/jobs/job_doesnotexist1/events");
    await fc.assert(
      fc.asyncProperty(route, fc.array(fc.tuple(key, value), { maxLength: 5 }), async (r, pairs) => {
        const qs = pairs.map(([k, v]) => `${k}=${v.replace(/#/g, "%23")}`).join("&");
        const res = await rawRequest(h.url, "GET", `${r}?${qs}`, { authorization: `Bearer ${h.key}` });
        count("GET query strings", res);
        expectWellFormed(res, `GET ${r}?${qs}`);
        if (res.status === 200 && r !== "/v1/jobs/job_doesnotexist1/events") {
          const page = JSON.parse(res.text) as { jobs: { job_id: string }[] };
          for (const j of page.jobs) expect(acceptedJobs.has(j.job_id)).toBe(true);
        }
      }),
      { numRuns: RUNS.query, seed: SEED },
    );
  });

  it("path ids on GET/DELETE /v1/jobs/{id}, /download and /events: dot segments, encoded slashes, long, unicode", async () => {
    const id = fc.oneof(
      fc.constantFrom(
        "..",
        "../..",
        "..%2f..",
        "%2e%2e",
        "%2e%2e%2f%2e%2e%2fhealthz",
        "%2F",
        "job_abc%2Fdownload",
        "job_%00",
        "%zz",
        "%",
        "job_abc/..",
        ".",
        "job_ab%63",
        "job_abc;x=1",
        "job_abc%3Bx",
        "job_abc%20",
        "job_",
        "%ff%fe",
        `job_${"a".repeat(64)}`,
        `job_${"a".repeat(65)}`,
        `job_${"a".repeat(200)}`,
        "x".repeat(5000),
        "",
        "history",
        "%68istory",
      ),
      unicodeString.map(pctEncode),
      fc.string({ maxLength: 30 }).map(pathSafe),
      fc.constantFrom(...[0, 1, 2]).map((i) => [...acceptedJobs][i] ?? "job_none"),
    );
    const suffix = fc.constantFrom("", "/download", "/events", "/", "/download/..", "/%64ownload", "/events%2f");
    const method = fc.constantFrom("GET", "GET", "DELETE", "POST", "PUT", "PATCH", "OPTIONS", "HEAD");
    const prefix = fc.constantFrom("/v1/jobs/", "/v1/jobs/", "/%761/jobs/", "/v1/jobs//", "/v1/miners/../jobs/", "/V1/jobs/");
    await fc.assert(
      fc.asyncProperty(method, prefix, id, suffix, async (m, p, jobId, s) => {
        const target = `${p}${jobId.replace(/#/g, "%23").replace(/\?/g, "%3F")}${s}`;
        const res = await rawRequest(h.url, m, target, { authorization: `Bearer ${h.key}` });
        count("path ids", res);
        expectWellFormed(res, `${m} ${target.slice(0, 200)}`);
      }),
      { numRuns: RUNS.paths, seed: SEED },
    );
  });

  it("Authorization variants and odd headers: a wrong key is always 401, never a 5xx", async () => {
    const auth = fc.constantFrom(
      { value: () => `Bearer ${h.key}`, ok: true },
      { value: () => `bearer ${h.key}`, ok: true },
      { value: () => `BEARER  ${h.key}  `, ok: true },
      { value: () => `Bearer\t${h.key}`, ok: true },
      { value: () => undefined, ok: false },
      { value: () => "", ok: false },
      { value: () => "Bearer", ok: false },
      { value: () => "Bearer ", ok: false },
      { value: () => `Basic ${Buffer.from(`user:${h.key}`).toString("base64")}`, ok: false },
      { value: () => `Bearer ${h.key}x`, ok: false },
      { value: () => `Bearer ${h.key.slice(0, -1)}`, ok: false },
      { value: () => `Bearer ${h.key} extra`, ok: false },
      { value: () => h.key, ok: false },
      { value: () => `Token ${h.key}`, ok: false },
      { value: () => `Bearer ${h.key.toUpperCase()}`, ok: false },
      { value: () => `Bearer ${minerKey}`, ok: false },
      { value: () => `Bearer ${revokedKey}`, ok: false },
      { value: () => `Bearer ${"a".repeat(8000)}`, ok: false },
      { value: () => `Bearer aitbc_ck_\xff\xfe`, ok: false },
      { value: () => "Bearer aitbc_ck_' OR '1'='1", ok: false },
    );
    const extra = fc.dictionary(
      fc.constantFrom("x-forwarded-for", "accept", "accept-encoding", "accept-version", "content-type", "last-event-id", "x-request-id", "idempotency-key", "cookie", "x-a"),
      fc.oneof(fc.constantFrom("", "*/*", "application/problem+json", "-1", "9".repeat(400), "\xff", "é".repeat(2000)), fc.string({ maxLength: 40 }).map((s) => s.replace(/[^\x20-\x7e]/g, ""))),
      { maxKeys: 4 },
    );
    const target = fc.constantFrom("/v1/jobs", "/v1/jobs?limit=1", "/v1/jobs/history?from=2020-01-01&to=2030-01-01", "/v1/jobs/job_none", "/v1/jobs/job_none/events", "/v1/nothing");
    await fc.assert(
      fc.asyncProperty(auth, extra, target, async (a, headers, t) => {
        const value = a.value();
        const res = await rawRequest(h.url, "GET", t, { ...headers, ...(value === undefined ? {} : { authorization: value }) });
        count("headers", res);
        expectWellFormed(res, `GET ${t} auth=${String(value).slice(0, 40)} ${JSON.stringify(headers).slice(0, 200)}`);
        if (!a.ok) expect(res.status).toBe(401);
        else expect(res.status).not.toBe(401);
      }),
      { numRuns: RUNS.headers, seed: SEED },
    );
  });

  it("POST /v1/files: random bytes and invalid UTF-8; stored exactly when non-empty valid UTF-8", async () => {
    const bytes = fc.oneof(
      fc.uint8Array({ maxLength: 1024 }).map((a) => Buffer.from(a)),
      unicodeString.map((s) => Buffer.from(s, "utf8")),
      fc.constantFrom([0xff], [0xc3], [0xed, 0xa0, 0x80], [0xf4, 0x90, 0x80, 0x80], [0xc0, 0xaf], [0xe2, 0x82], [0x00], [0xef, 0xbb, 0xbf, 0x41], [0xef, 0xbb, 0xbf], []).map((a) => Buffer.from(a)),
      fc.constantFrom(131_072, 131_073, 1024 * 1024 + 1),
    );
    const ct = fc.constantFrom("text/plain", "text/plain", "application/octet-stream", "text/plain; charset=utf-8", "text/plain; charset=latin1", "application/json", "text/html", "");
    const strict = new TextDecoder("utf-8", { fatal: true });
    await fc.assert(
      fc.asyncProperty(bytes, ct, async (bytesOrSize, type) => {
        // Large bodies are drawn as a size, so a counterexample prints short.
        const body = typeof bytesOrSize === "number" ? Buffer.alloc(bytesOrSize, 0x61) : bytesOrSize;
        const res = await rawRequest(h.url, "POST", "/v1/files", { authorization: `Bearer ${h.key}`, ...(type === "" ? {} : { "content-type": type }) }, body);
        count("POST /v1/files", res);
        expectWellFormed(res, `POST /v1/files [${type}] ${body.length} bytes`);
        if (res.status === 201) {
          acceptedFiles.add((JSON.parse(res.text) as { file_id: string }).file_id);
          // Non-empty text (a byte-order mark alone decodes to nothing), valid UTF-8.
          expect(strict.decode(body).length).toBeGreaterThan(0);
        }
        let validText = false;
        try {
          const text = strict.decode(body);
          validText = text.length > 0 && text.length <= 131_072;
        } catch {
          validText = false;
        }
        if (/^(text\/plain|application\/octet-stream)/.test(type) && validText && body.length <= 1024 * 1024) expect(res.status).toBe(201);
      }),
      { numRuns: RUNS.files, seed: SEED },
    );
  });

  it("afterwards: /healthz is 200 and the store holds exactly the accepted jobs and files", async () => {
    const health = await rawRequest(h.url, "GET", "/healthz");
    expect(health.status).toBe(200);
    const counts = await h.coordinator.store.countByState();
    const total = Object.values(counts).reduce((a, b) => a + (b ?? 0), 0);
    expect(total).toBe(acceptedJobs.size);
    const db = new Database(databasePath(h.dir), { readonly: true, fileMustExist: true });
    try {
      const files = db.prepare("SELECT id FROM files").all() as { id: string }[];
      expect(new Set(files.map((f) => f.id))).toEqual(acceptedFiles);
    } finally {
      db.close();
    }
    // HEAD of a live event stream answers with the stream's headers and ends (it used to hang).
    const head = await rawRequest(h.url, "HEAD", `/v1/jobs/${[...acceptedJobs][0] ?? "job_none"}/events`, { authorization: `Bearer ${h.key}` });
    expect(head).toMatchObject({ status: 200, contentType: expect.stringMatching(/^text\/event-stream/) as unknown });
    // A normal request still works end to end.
    const ok = await rawRequest(h.url, "POST", "/v1/jobs", json(h.key), JSON.stringify({ model: "gpt2", input: "still here" }));
    expect(ok.status).toBe(201);
    const inputs = Object.values(tried).reduce((a, b) => a + b, 0);
    const byStatus = [...statuses.entries()].sort(([a], [b]) => a - b).map(([s, n]) => `${s}×${n}`).join(" ");
    console.log(
      `rest-fuzz (seed ${SEED}): ${inputs} inputs, 0 server errors; ${Object.entries(tried).map(([k, n]) => `${k}: ${n}`).join("; ")}; statuses ${byStatus}; ${acceptedJobs.size} jobs and ${acceptedFiles.size} files accepted, store matches`,
    );
    expect(statuses.has(500)).toBe(false);
  });
});
