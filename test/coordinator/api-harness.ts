import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { expect } from "vitest";
import { silentLogger } from "../../src/common/logger.js";
import { loadCoordinatorConfig } from "../../src/coordinator/config.js";
import { Coordinator } from "../../src/coordinator/coordinator.js";
import type { JobRecord } from "../../src/coordinator/store/job-store.js";

/**
 * A real Coordinator on port 0 over a real SQLite file in a temp dir, plus the few things the
 * REST tests need: client keys per tenant, fetch with a key, and store-level verbs that move a
 * job to running or completed (no miner process is needed to test the client API).
 */
export interface ApiHarness {
  coordinator: Coordinator;
  url: string;
  dir: string;
  /** Sends a request with `Authorization: Bearer <key>` (or none when key is null). */
  call(method: string, route: string, opts?: { key?: string | null; json?: unknown; body?: RequestInit["body"]; headers?: Record<string, string> }): Promise<Response>;
  newKey(tenant: string, kind?: "client" | "miner" | "operator"): Promise<{ key: string; id: string }>;
  /** Claims the job (alone on its model), marks it running, at the real time. */
  run(jobId: string): Promise<{ jobId: string; attempt: number; leaseToken: string }>;
  /**
   * Runs the job and commits `output` as its result. The lease is taken at the real time (the
   * coordinator's reaper runs on it, and would requeue a lease dated in the past); `completedAt`
   * dates only the commit.
   */
  complete(jobId: string, output: string, completedAt?: number): Promise<JobRecord>;
  stop(): Promise<void>;
}

/** A clock a test can move (rate-limit windows) instead of sleeping. */
export interface TestClock {
  now: number;
}

export async function startApi(overrides: Record<string, unknown> = {}, dir?: string, clock?: TestClock): Promise<ApiHarness & { key: string }> {
  const dataDir = dir ?? mkdtempSync(path.join(os.tmpdir(), "aitbc-api-"));
  const config = loadCoordinatorConfig(undefined, {
    optional: true,
    env: {},
    overrides: { "server.port": 0, "storage.data_dir": dataDir, "log.level": "silent", ...overrides },
  });
  const coordinator = new Coordinator({ config, log: silentLogger(), ...(clock === undefined ? {} : { now: () => clock.now }) });
  const url = await coordinator.start();
  const store = coordinator.store;

  const newKey = async (tenant: string, kind: "client" | "miner" | "operator" = "client") => {
    const k = await store.createKey(kind, `test-${tenant}`, tenant, Date.now());
    return { key: k.key, id: k.record.id };
  };
  const main = await newKey("acme");

  const call: ApiHarness["call"] = (method, route, opts = {}) => {
    const key = opts.key === undefined ? main.key : opts.key;
    const headers: Record<string, string> = { ...(key === null ? {} : { authorization: `Bearer ${key}` }), ...opts.headers };
    let body = opts.body;
    if (opts.json !== undefined) {
      body = JSON.stringify(opts.json);
      headers["content-type"] ??= "application/json";
    }
    return fetch(`${url}${route}`, { method, headers, ...(body === undefined ? {} : { body }) });
  };

  const run: ApiHarness["run"] = async (jobId) => {
    const now = Date.now();
    const job = await store.getJobById(jobId);
    if (job === null) throw new Error(`no job ${jobId}`);
    const a = await store.claimNextJob({ minerId: "miner_test", gpus: [], models: [job.model] }, now, 60_000);
    if (a?.job.id !== jobId) throw new Error(`claimed ${a?.job.id ?? "nothing"} instead of ${jobId} (give each job its own model)`);
    const ref = { jobId, attempt: a.attempt, leaseToken: a.leaseToken };
    expect(await store.markRunning(ref, now, 60_000)).toBe(true);
    return ref;
  };

  const complete: ApiHarness["complete"] = async (jobId, output, completedAt = Date.now()) => {
    const ref = await run(jobId);
    const put = await coordinator.context.results.put(jobId, ref.attempt, Buffer.from(output, "utf8"));
    const outcome = await store.commitResult(
      ref,
      {
        sha256: put.sha256,
        bytes: put.bytes,
        location: put.location,
        finishReason: "length",
        usage: { prompt_tokens: 3, completion_tokens: 5 },
        tokensPerSecond: 12.5,
        attempt: ref.attempt,
      },
      completedAt,
    );
    expect(outcome).toBe("committed");
    const job = await store.getJobById(jobId);
    if (job === null) throw new Error("job vanished");
    return job;
  };

  return {
    coordinator,
    url,
    dir: dataDir,
    key: main.key,
    call,
    newKey,
    run,
    complete,
    stop: async () => {
      await coordinator.stop();
      if (dir === undefined) rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** Checks the RFC 9457 shape every error must have and returns the body. */
export async function expectProblem(res: Response, status: number, code?: string): Promise<Record<string, unknown>> {
  const text = await res.text();
  expect({ status: res.status, body: text }).toMatchObject({ status });
  expect(res.headers.get("content-type")).toMatch(/^application\/problem\+json/);
  const body = JSON.parse(text) as Record<string, unknown>;
  expect(body.status).toBe(status);
  expect(typeof body.code).toBe("string");
  expect(typeof body.detail).toBe("string");
  expect(text).not.toMatch(/at .*\.(ts|js):\d+/); // never a stack trace
  if (code !== undefined) expect(body.code).toBe(code);
  return body;
}

let modelSeq = 0;
/** A model name no other job in the test uses, so a claim picks exactly this job. */
export function uniqueModel(): string {
  modelSeq += 1;
  return `gpt2-t${modelSeq}`;
}

export async function submit(h: ApiHarness, body: Record<string, unknown> = {}, key?: string): Promise<string> {
  const res = await h.call("POST", "/v1/jobs", { json: { model: uniqueModel(), input: "Hello", ...body }, ...(key === undefined ? {} : { key }) });
  expect(res.status).toBe(201);
  return ((await res.json()) as { job_id: string }).job_id;
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
