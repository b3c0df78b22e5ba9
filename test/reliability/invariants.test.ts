import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import Database from "better-sqlite3";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { databasePath } from "../../src/coordinator/coordinator.js";
import { LocalResultStore } from "../../src/coordinator/results/result-store.js";
import type { NewJob } from "../../src/coordinator/store/job-store.js";
import { SqliteJobStore } from "../../src/coordinator/store/sqlite/sqlite-job-store.js";
import { resolveGenerationParameters } from "../../src/protocol/generation.js";
import { checkInvariants } from "./invariants.js";

/**
 * The invariant checker must catch what it claims to: every history the store itself writes
 * passes, and each kind of damage (a lost job, a second completed event, an event after the
 * terminal one, overlapping leases, a terminal event by an attempt that no longer holds the
 * lease or from a state it may not follow, a result file that does not match) is reported.
 * Damage is what a store without its fence would write: the real store builds the history up
 * to the point of the fault, then the SQLite file gets the rows the broken verb would add.
 */
describe("checkInvariants", () => {
  let dir: string;
  let dataDir: string;
  const TTL = 1_000;

  const newJob = (over: Partial<NewJob> = {}): NewJob => ({
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
    ...over,
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

  const miner = { minerId: "m1", gpus: [], models: ["gpt2"] };

  /** Runs `build` against a real store on the data dir, then closes it. */
  async function withStore<T>(build: (store: SqliteJobStore, results: LocalResultStore) => Promise<T>): Promise<T> {
    const store = new SqliteJobStore(databasePath(dataDir));
    try {
      return await build(store, new LocalResultStore(path.join(dataDir, "results")));
    } finally {
      await store.close();
    }
  }

  /** queued → assigned(1) → running(1) → requeued(1) (the lease expired); with `reclaim`, then assigned(2). */
  async function lostLease(reclaim = false): Promise<string> {
    return withStore(async (store) => {
      const id = (await store.createJob(newJob(), 0)).job.id;
      const a1 = (await store.claimNextJob(miner, 1, TTL))!;
      await store.markRunning({ jobId: id, attempt: 1, leaseToken: a1.leaseToken }, 2, TTL);
      expect(await store.reapExpiredLeases(10_000, 0)).toMatchObject([{ jobId: id, outcome: "requeued" }]);
      if (reclaim) expect(await store.claimNextJob(miner, 10_001, TTL)).toMatchObject({ attempt: 2 });
      return id;
    });
  }

  /** Appends the event a broken store verb would log, as the next seq of the job. */
  function appendEvent(jobId: string, type: string, data: Record<string, unknown>): void {
    const db = new Database(databasePath(dataDir));
    try {
      const { seq } = db.prepare("SELECT COALESCE(MAX(seq), 0) + 1 AS seq FROM job_events WHERE job_id = ?").get(jobId) as { seq: number };
      db.prepare("INSERT INTO job_events (job_id, seq, type, data, at) VALUES (?, ?, ?, ?, 20000)").run(jobId, seq, type, JSON.stringify(data));
    } finally {
      db.close();
    }
  }

  /** What commitResult would do without its (attempt, lease_token) check: store and commit this attempt's result. */
  async function commitUnfenced(jobId: string, attempt: number): Promise<void> {
    const stored = await new LocalResultStore(path.join(dataDir, "results")).put(jobId, attempt, Buffer.from(`late output of attempt ${attempt}`));
    const result = { ...stored, finishReason: "length", usage: { prompt_tokens: 1, completion_tokens: 2 }, tokensPerSecond: 1, attempt };
    tamper("UPDATE jobs SET status = 'completed', result = ? WHERE id = ?", JSON.stringify(result), jobId);
    appendEvent(jobId, "completed", { attempt, miner_id: "m1" });
  }

  /** What a verb ending the job without checking the lease would do. */
  function endUnfenced(jobId: string, status: string, attempt: number): void {
    tamper("UPDATE jobs SET status = ? WHERE id = ?", status, jobId);
    appendEvent(jobId, status, { attempt, miner_id: "m1", error: { code: status, message: "injected" } });
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

  it("passes every way the store itself ends a job", async () => {
    const ids = await withStore(async (store, results) => {
      let t = 100;
      const out: Record<string, string> = {};
      const claim = async (id: string): Promise<{ jobId: string; attempt: number; leaseToken: string }> => {
        const a = (await store.claimNextJob(miner, ++t, TTL))!;
        expect(a.job.id).toBe(id);
        return { jobId: id, attempt: a.attempt, leaseToken: a.leaseToken };
      };
      const result = async (ref: { jobId: string; attempt: number }) => ({
        ...(await results.put(ref.jobId, ref.attempt, Buffer.from("out"))),
        finishReason: "length",
        usage: { prompt_tokens: 1, completion_tokens: 1 },
        tokensPerSecond: 1,
        attempt: ref.attempt,
      });

      // Completed straight from assigned (the result came before the started frame was handled).
      out.fromAssigned = (await store.createJob(newJob(), ++t)).job.id;
      let ref = await claim(out.fromAssigned);
      expect(await store.commitResult(ref, await result(ref), ++t)).toBe("committed");
      // Cancelled while queued, and while running (the cancel wins over the result that follows).
      out.queuedCancel = (await store.createJob(newJob(), ++t)).job.id;
      expect(await store.requestCancel("acme", out.queuedCancel, ++t)).toMatchObject({ outcome: "cancelled" });
      out.runningCancel = (await store.createJob(newJob(), ++t)).job.id;
      ref = await claim(out.runningCancel);
      await store.markRunning(ref, ++t, TTL);
      expect(await store.requestCancel("acme", out.runningCancel, ++t)).toMatchObject({ outcome: "cancel_requested" });
      expect(await store.commitResult(ref, await result(ref), ++t)).toBe("stale");
      // Failed by the miner (not retryable), and by the reaper on the last attempt.
      out.failed = (await store.createJob(newJob(), ++t)).job.id;
      ref = await claim(out.failed);
      await store.markRunning(ref, ++t, TTL);
      expect(await store.failAttempt(ref, { code: "bad_input", message: "no", retryable: false }, ++t, 0)).toBe("failed");
      out.exhausted = (await store.createJob(newJob({ maxAttempts: 1 }), ++t)).job.id;
      ref = await claim(out.exhausted);
      await store.markRunning(ref, ++t, TTL);
      t += TTL + 1;
      expect(await store.reapExpiredLeases(++t, 0)).toMatchObject([{ jobId: out.exhausted, outcome: "failed" }]);
      // Timed out while running.
      out.timedOut = (await store.createJob(newJob({ timeoutSeconds: 1 }), ++t)).job.id;
      ref = await claim(out.timedOut);
      await store.markRunning(ref, ++t, 60_000);
      t += 1_001;
      expect(await store.timeOutRunning(++t)).toMatchObject([{ jobId: out.timedOut, outcome: "timed_out" }]);
      // Requeued after a lost lease, then cancelled while queued again (the event names attempt 1, which no longer holds anything).
      out.requeuedCancel = (await store.createJob(newJob(), ++t)).job.id;
      ref = await claim(out.requeuedCancel);
      await store.markRunning(ref, ++t, TTL);
      t += TTL + 1;
      expect(await store.reapExpiredLeases(++t, 0)).toMatchObject([{ jobId: out.requeuedCancel, outcome: "requeued" }]);
      expect(await store.requestCancel("acme", out.requeuedCancel, ++t)).toMatchObject({ outcome: "cancelled" });
      // Expired in the queue, never assigned.
      out.expired = (await store.createJob(newJob(), ++t)).job.id;
      expect(await store.expireQueued(t + 1_001, 1_000)).toMatchObject([{ jobId: out.expired, outcome: "expired" }]);
      return out;
    });
    const report = checkInvariants(dataDir, Object.values(ids));
    expect(report.violations).toEqual([]);
    expect(report.byStatus).toEqual({ completed: 1, cancelled: 3, failed: 2, timed_out: 1, expired: 1 });
  });

  it("reports a result committed by an attempt that had already lost its lease", async () => {
    // queued → assigned(1) → running(1) → requeued(1) → completed(attempt 1): the fencing failure itself.
    const id = await lostLease();
    await commitUnfenced(id, 1);
    expect(checkInvariants(dataDir, [id]).violations).toEqual([`${id}: completed from state queued: attempt 1 held no lease [queued,assigned,running,requeued,completed]`]);
  });

  it("reports a result committed by the old attempt while the new one holds the lease", async () => {
    const id = await lostLease(true);
    await commitUnfenced(id, 1);
    expect(checkInvariants(dataDir, [id]).violations).toContain(
      `${id}: completed for attempt 1 while attempt 2 held the lease [queued,assigned,running,requeued,assigned,completed]`,
    );
  });

  it.each(["failed", "timed_out"])("reports %s by an attempt that had already lost its lease", async (status) => {
    const id = await lostLease();
    endUnfenced(id, status, 1);
    expect(checkInvariants(dataDir, [id]).violations).toEqual([`${id}: ${status} from state queued: attempt 1 held no lease [queued,assigned,running,requeued,${status}]`]);
  });

  it.each(["failed", "timed_out", "cancelled"])("reports %s by an attempt other than the one holding the lease", async (status) => {
    const id = await lostLease(true);
    endUnfenced(id, status, 1);
    expect(checkInvariants(dataDir, [id]).violations).toEqual([
      `${id}: ${status} for attempt 1 while attempt 2 held the lease [queued,assigned,running,requeued,assigned,${status}]`,
    ]);
  });

  it("reports a job expired while a miner held its lease", async () => {
    const id = await withStore(async (store) => {
      const job = (await store.createJob(newJob(), 0)).job.id;
      expect(await store.claimNextJob(miner, 1, TTL)).toMatchObject({ attempt: 1 });
      return job;
    });
    endUnfenced(id, "expired", 1);
    expect(checkInvariants(dataDir, [id]).violations).toEqual([`${id}: expired from state assigned (attempt 1 held the lease) [queued,assigned,expired]`]);
  });

  it("reports a cancel requested of an attempt that no longer holds the lease", async () => {
    const id = await lostLease();
    appendEvent(id, "cancel_requested", { attempt: 1, miner_id: "m1" });
    expect(checkInvariants(dataDir, [id]).violations).toEqual([`${id}: cancel_requested from state queued: attempt 1 held no lease [queued,assigned,running,requeued,cancel_requested]`]);
  });

  it("reports a requeue after the job completed", async () => {
    const { done } = await history();
    appendEvent(done, "requeued", { attempt: 2, miner_id: "m1", reason: "lease_expired" });
    expect(checkInvariants(dataDir, [done]).violations).toEqual([
      `${done}: event requeued after a terminal event [queued,assigned,running,requeued,assigned,running,completed,requeued]`,
    ]);
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
