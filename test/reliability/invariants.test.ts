import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import Database from "better-sqlite3";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { databasePath } from "../../src/coordinator/coordinator.js";
import { LocalResultStore } from "../../src/coordinator/results/result-store.js";
import type { NewJob } from "../../src/coordinator/store/job-store.js";
import { SqliteJobStore } from "../../src/coordinator/store/sqlite-job-store.js";
import { resolveGenerationParameters } from "../../src/protocol/generation.js";
import { checkInvariants } from "./invariants.js";

/**
 * The invariant checker must catch what it claims to: a clean history passes, and each kind of
 * damage (a lost job, a second completed event, an event after the terminal one, overlapping
 * leases, a result file that does not match) is reported.
 */
describe("checkInvariants", () => {
  let dir: string;
  let dataDir: string;
  const TTL = 1_000;

  const newJob = (): NewJob => ({
    tenant: "acme",
    model: "gpt2",
    input: "hello",
    inputFileId: null,
    outputFormat: "json",
    destination: "",
    requirements: {},
    priority: "normal",
    timeoutSeconds: 60,
    parameters: resolveGenerationParameters(undefined, () => 7),
    maxAttempts: 3,
    estimatedCost: 0.01,
    estimatedTimeSeconds: 2,
  });

  beforeEach(() => {
    dir = mkdtempSync(path.join(tmpdir(), "aitbc-inv-"));
    dataDir = path.join(dir, "data");
  });

  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  /** One job requeued once (lease expired) then completed on attempt 2, one left queued. */
  async function history(): Promise<{ done: string; queued: string; location: string }> {
    const store = new SqliteJobStore(databasePath(dataDir));
    const results = new LocalResultStore(path.join(dataDir, "results"));
    try {
      const miner = { minerId: "m1", gpus: [], models: ["gpt2"] };
      const done = (await store.createJob(newJob(), 0)).job.id;
      const queued = (await store.createJob(newJob(), 1)).job.id;
      const a1 = (await store.claimNextJob(miner, 2, TTL))!;
      expect(a1.job.id).toBe(done);
      await store.markRunning({ jobId: done, attempt: 1, leaseToken: a1.leaseToken }, 3, TTL);
      await store.reapExpiredLeases(10_000, 0);
      const a2 = (await store.claimNextJob(miner, 10_001, TTL))!;
      expect(a2).toMatchObject({ attempt: 2 });
      expect(a2.job.id).toBe(done);
      const stored = await results.put(done, 2, Buffer.from("the output"));
      const ref = { jobId: done, attempt: 2, leaseToken: a2.leaseToken };
      await store.markRunning(ref, 10_002, TTL);
      const outcome = await store.commitResult(
        ref,
        { ...stored, finishReason: "length", usage: { prompt_tokens: 1, completion_tokens: 2 }, tokensPerSecond: 1, attempt: 2 },
        10_003,
      );
      expect(outcome).toBe("committed");
      return { done, queued, location: stored.location };
    } finally {
      await store.close();
    }
  }

  function tamper(sql: string, ...params: unknown[]): void {
    const db = new Database(databasePath(dataDir));
    try {
      db.prepare(sql).run(...params);
    } finally {
      db.close();
    }
  }

  it("passes a clean history and counts requeues and assignments", async () => {
    const { done, queued } = await history();
    const report = checkInvariants(dataDir, [done, queued]);
    expect(report).toEqual({ jobs: 2, byStatus: { completed: 1, queued: 1 }, requeues: 1, assignments: 2, violations: [] });
  });

  it("reports an accepted job that is missing", async () => {
    const { done } = await history();
    expect(checkInvariants(dataDir, [done, "job_lost"]).violations).toEqual(["job_lost: accepted (2xx) but missing from the store"]);
  });

  it("reports a second completed event, which is also an event after the terminal one", async () => {
    const { done } = await history();
    tamper("INSERT INTO job_events (job_id, seq, type, data, at) VALUES (?, 8, 'completed', '{\"attempt\":2}', 20000)", done);
    const v = checkInvariants(dataDir, [done]).violations.join("\n");
    expect(v).toContain("2 completed events");
    expect(v).toContain("event completed after a terminal event");
  });

  it("reports an assignment while the previous attempt still held its lease", async () => {
    const { queued } = await history();
    tamper("INSERT INTO job_events (job_id, seq, type, data, at) VALUES (?, 2, 'assigned', '{\"attempt\":1}', 5)", queued);
    tamper("INSERT INTO job_events (job_id, seq, type, data, at) VALUES (?, 3, 'assigned', '{\"attempt\":2}', 6)", queued);
    tamper("UPDATE jobs SET status = 'assigned', attempt = 2 WHERE id = ?", queued);
    expect(checkInvariants(dataDir, [queued]).violations.join("\n")).toContain("attempt 2 assigned while attempt 1 still held a lease");
  });

  it("reports a status the events do not explain", async () => {
    const { queued } = await history();
    tamper("UPDATE jobs SET status = 'failed' WHERE id = ?", queued);
    expect(checkInvariants(dataDir, [queued]).violations.join("\n")).toContain("terminal with 0 terminal events");
  });

  it("reports a result file that does not match its sha256, and one that is gone", async () => {
    const { done, location } = await history();
    const file = path.join(dataDir, "results", location);
    writeFileSync(file, "something else");
    expect(checkInvariants(dataDir, [done]).violations.join("\n")).toContain("does not match");
    rmSync(file);
    expect(checkInvariants(dataDir, [done]).violations.join("\n")).toContain("missing");
  });
});
