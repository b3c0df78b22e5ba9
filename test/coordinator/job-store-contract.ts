import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { GpuInfo } from "../../src/protocol/frames.js";
import type { JobStore, LeaseRef, MinerCapabilities, NewJob, StoredResult } from "../../src/coordinator/store/job-store.js";

/**
 * The JobStore contract: every implementation (SQLite now, PostgreSQL later) runs this same
 * suite through `jobStoreContract(name, factory)`. The factory returns a fresh, empty store;
 * `reopen` (when given) closes and reopens the same database, for durability checks.
 */
export interface StoreHarness {
  store: JobStore;
  /** Closes the store and opens the same database again. */
  reopen?: () => Promise<JobStore>;
  cleanup?: () => Promise<void>;
}

const TTL = 30_000;
const BACKOFF = 1_000;
const T0 = Date.parse("2026-01-01T00:00:00Z");

export function newJob(over: Partial<NewJob> = {}): NewJob {
  return {
    tenant: "acme",
    model: "gpt2",
    input: "Once upon a time",
    inputFileId: null,
    outputFormat: "json",
    destination: "local",
    requirements: {},
    priority: "normal",
    timeoutSeconds: 60,
    parameters: { max_new_tokens: 16, temperature: 0.7, top_k: 50, top_p: 1, repetition_penalty: 1, stop: [], seed: 42 },
    maxAttempts: 3,
    estimatedCost: 0.01,
    estimatedTimeSeconds: 3,
    ...over,
  };
}

const gpu = (name: string, vramMb: number, index = 0): GpuInfo => ({ index, name, vram_total_mb: vramMb, vram_free_mb: vramMb });

export function miner(over: Partial<MinerCapabilities> = {}): MinerCapabilities {
  return { minerId: "miner_a", gpus: [], models: ["gpt2"], ...over };
}

export function result(attempt: number, sha = "ab".repeat(32)): StoredResult {
  return {
    sha256: sha,
    bytes: 5,
    location: `job_x/attempt-${attempt}.txt`,
    finishReason: "length",
    usage: { prompt_tokens: 4, completion_tokens: 16 },
    tokensPerSecond: 100,
    attempt,
  };
}

export function jobStoreContract(name: string, factory: () => Promise<StoreHarness>): void {
  describe(`JobStore contract: ${name}`, () => {
    let h: StoreHarness;
    let store: JobStore;

    beforeEach(async () => {
      h = await factory();
      store = h.store;
    });
    afterEach(async () => {
      await store.close();
      await h.cleanup?.();
    });

    async function claim(m = miner(), now = T0): Promise<LeaseRef> {
      const a = await store.claimNextJob(m, now, TTL);
      if (a === null) throw new Error("expected a job to claim");
      return { jobId: a.job.id, attempt: a.attempt, leaseToken: a.leaseToken };
    }

    describe("submit and read", () => {
      it("creates a queued job with a job_ id and reads it back only for its tenant", async () => {
        const { job, created } = await store.createJob(newJob(), T0);
        expect(created).toBe(true);
        expect(job.id).toMatch(/^job_[a-z0-9]+$/);
        expect(job).toMatchObject({ status: "queued", progress: 0, attempt: 0, minerId: null, createdAt: T0, tenant: "acme" });
        expect(job.parameters.seed).toBe(42);
        expect(await store.getJob("acme", job.id)).toEqual(job);
        expect(await store.getJob("other", job.id)).toBeNull();
        expect(await store.getJob("acme", "job_doesnotexist")).toBeNull();
        expect(await store.getJobById(job.id)).toEqual(job);
      });

      it("returns the same job for a repeated idempotency key and refuses it with another body", async () => {
        const idem = { key: "k1", requestHash: "h1" };
        const a = await store.createJob(newJob({ idempotency: idem }), T0);
        const b = await store.createJob(newJob({ idempotency: idem }), T0 + 5);
        expect(b.created).toBe(false);
        expect(b.job.id).toBe(a.job.id);
        await expect(store.createJob(newJob({ idempotency: { key: "k1", requestHash: "h2" } }), T0 + 6)).rejects.toThrow(/different request/);
        // The same key belongs to each tenant separately.
        const c = await store.createJob(newJob({ tenant: "other", idempotency: idem }), T0);
        expect(c.created).toBe(true);
        expect(c.job.id).not.toBe(a.job.id);
        expect((await store.listJobs("acme", { limit: 10 })).total).toBe(1);
      });

      it("pages the tenant's jobs newest first with a cursor, filtered by status", async () => {
        const ids: string[] = [];
        for (let i = 0; i < 5; i++) ids.push((await store.createJob(newJob(), T0 + i)).job.id);
        await store.createJob(newJob({ tenant: "other" }), T0);
        const p1 = await store.listJobs("acme", { limit: 2 });
        expect(p1.total).toBe(5);
        expect(p1.items.map((j) => j.id)).toEqual([ids[4], ids[3]]);
        expect(p1.nextCursor).not.toBeNull();
        const p2 = await store.listJobs("acme", { limit: 2, cursor: p1.nextCursor! });
        expect(p2.items.map((j) => j.id)).toEqual([ids[2], ids[1]]);
        const p3 = await store.listJobs("acme", { limit: 2, cursor: p2.nextCursor! });
        expect(p3.items.map((j) => j.id)).toEqual([ids[0]]);
        expect(p3.nextCursor).toBeNull();
        // Exactly a full page: no cursor.
        expect((await store.listJobs("acme", { limit: 5 })).nextCursor).toBeNull();
        await store.requestCancel("acme", ids[1]!, T0 + 10);
        const cancelled = await store.listJobs("acme", { status: "cancelled", limit: 10 });
        expect(cancelled.total).toBe(1);
        expect(cancelled.items[0]!.id).toBe(ids[1]);
        expect((await store.listJobs("acme", { status: "queued", limit: 10 })).total).toBe(4);
        await expect(store.listJobs("acme", { limit: 2, cursor: "garbage!" })).rejects.toThrow();
      });

      it("pages jobs created in the same millisecond without skipping or repeating", async () => {
        const ids = new Set<string>();
        for (let i = 0; i < 7; i++) ids.add((await store.createJob(newJob(), T0)).job.id);
        const seen: string[] = [];
        let cursor: string | undefined;
        do {
          const page = await store.listJobs("acme", { limit: 3, ...(cursor === undefined ? {} : { cursor }) });
          seen.push(...page.items.map((j) => j.id));
          cursor = page.nextCursor ?? undefined;
        } while (cursor !== undefined);
        expect(seen.length).toBe(7);
        expect(new Set(seen)).toEqual(ids);
        // Ties are broken by submission order: newest submitted first.
        expect(seen).toEqual([...ids].reverse());
      });

      it("lists finished jobs by completion time within [from, to]", async () => {
        const done: string[] = [];
        for (let i = 0; i < 3; i++) {
          const { job } = await store.createJob(newJob(), T0);
          await store.requestCancel("acme", job.id, T0 + 1000 * (i + 1));
          done.push(job.id);
        }
        await store.createJob(newJob(), T0); // still queued: never in history
        const all = await store.listHistory("acme", { from: T0, to: T0 + 10_000, limit: 10 });
        expect(all.items.map((j) => j.id)).toEqual([done[2], done[1], done[0]]);
        const mid = await store.listHistory("acme", { from: T0 + 2000, to: T0 + 2000, limit: 10 });
        expect(mid.items.map((j) => j.id)).toEqual([done[1]]);
        const p1 = await store.listHistory("acme", { from: T0, to: T0 + 10_000, limit: 2 });
        expect(p1.total).toBe(3);
        const p2 = await store.listHistory("acme", { from: T0, to: T0 + 10_000, limit: 2, cursor: p1.nextCursor! });
        expect(p2.items.map((j) => j.id)).toEqual([done[0]]);
        expect((await store.listHistory("other", { from: 0, to: T0 + 10_000, limit: 10 })).total).toBe(0);
      });

      it("stores uploaded files per tenant", async () => {
        const f = await store.createFile("acme", "héllo", "cd".repeat(32), T0);
        expect(f.id).toMatch(/^file_/);
        expect(f.bytes).toBe(Buffer.byteLength("héllo"));
        expect((await store.getFile("acme", f.id))?.content).toBe("héllo");
        expect(await store.getFile("other", f.id)).toBeNull();
      });

      it("counts queued jobs and a job's position (priority, then age)", async () => {
        const a = (await store.createJob(newJob(), T0)).job;
        const b = (await store.createJob(newJob({ priority: "high" }), T0 + 1)).job;
        const c = (await store.createJob(newJob({ priority: "low" }), T0 + 2)).job;
        await store.createJob(newJob({ model: "distilgpt2", tenant: "other" }), T0);
        expect(await store.countQueued({})).toBe(4);
        expect(await store.countQueued({ tenant: "acme" })).toBe(3);
        expect(await store.countQueued({ model: "gpt2" })).toBe(3);
        expect(await store.queuePosition(b)).toBe(0);
        expect(await store.queuePosition(a)).toBe(1);
        expect(await store.queuePosition(c)).toBe(2);
      });
    });

    describe("cancel", () => {
      it("cancels a queued job at once, marks a running one, and refuses a finished one", async () => {
        const q = (await store.createJob(newJob(), T0)).job;
        const c1 = await store.requestCancel("acme", q.id, T0 + 1);
        expect(c1?.outcome).toBe("cancelled");
        expect(c1?.job.status).toBe("cancelled");
        expect(c1?.job.completedAt).toBe(T0 + 1);

        await store.createJob(newJob(), T0 + 2);
        const ref = await claim();
        expect(await store.markRunning(ref, T0 + 3, TTL)).toBe(true);
        const c2 = await store.requestCancel("acme", ref.jobId, T0 + 4);
        expect(c2?.outcome).toBe("cancel_requested");
        expect(c2?.job).toMatchObject({ status: "running", cancelRequested: true });
        expect(await store.renewLease(ref, T0 + 5, TTL, 50)).toEqual({ renewed: true, cancelRequested: true });

        const c3 = await store.requestCancel("acme", q.id, T0 + 6);
        expect(c3?.outcome).toBe("conflict");
        expect(c3?.job.status).toBe("cancelled");
        expect(await store.requestCancel("other", ref.jobId, T0 + 7)).toBeNull();
      });

      it("a cancel-requested job whose miner fails or releases it ends cancelled, never requeued", async () => {
        await store.createJob(newJob(), T0);
        await store.createJob(newJob(), T0 + 1);
        const r1 = await claim();
        await store.requestCancel("acme", r1.jobId, T0 + 2);
        expect(await store.releaseLease(r1, T0 + 3)).toBe("cancelled");
        const r2 = await claim(miner(), T0 + 4);
        await store.requestCancel("acme", r2.jobId, T0 + 5);
        expect(await store.failAttempt(r2, { code: "engine_error", message: "x", retryable: true }, T0 + 6, BACKOFF)).toBe("cancelled");
        expect((await store.getJobById(r2.jobId))?.status).toBe("cancelled");
      });
    });

    describe("leases", () => {
      it("claims by priority then age, bumps the attempt and fences every verb by the lease triple", async () => {
        const low = (await store.createJob(newJob({ priority: "low" }), T0)).job;
        const normal = (await store.createJob(newJob(), T0 + 1)).job;
        const high = (await store.createJob(newJob({ priority: "high" }), T0 + 2)).job;
        const a = await store.claimNextJob(miner(), T0 + 10, TTL);
        expect(a?.job.id).toBe(high.id);
        expect(a).toMatchObject({ attempt: 1, leaseExpiresAt: T0 + 10 + TTL });
        expect(a?.job).toMatchObject({ status: "assigned", minerId: "miner_a", attempt: 1 });
        expect((await store.claimNextJob(miner({ minerId: "miner_b" }), T0 + 11, TTL))?.job.id).toBe(normal.id);
        expect((await store.claimNextJob(miner({ minerId: "miner_c" }), T0 + 12, TTL))?.job.id).toBe(low.id);
        expect(await store.claimNextJob(miner(), T0 + 13, TTL)).toBeNull();

        const ref = { jobId: high.id, attempt: 1, leaseToken: a!.leaseToken };
        const wrongToken = { ...ref, leaseToken: "x".repeat(ref.leaseToken.length) };
        const wrongAttempt = { ...ref, attempt: 2 };
        expect(await store.markRunning(wrongToken, T0 + 20, TTL)).toBe(false);
        expect(await store.markRunning(wrongAttempt, T0 + 20, TTL)).toBe(false);
        expect(await store.markRunning(ref, T0 + 20, TTL)).toBe(true);
        const running = await store.getJobById(high.id);
        expect(running).toMatchObject({ status: "running", startedAt: T0 + 20 });
        expect(await store.renewLease(wrongToken, T0 + 30, TTL, 10)).toEqual({ renewed: false, cancelRequested: false });
        expect(await store.renewLease(ref, T0 + 30, TTL, 40)).toEqual({ renewed: true, cancelRequested: false });
        expect((await store.getJobById(high.id))?.progress).toBe(40);
        expect(await store.commitResult(wrongToken, result(1), T0 + 40)).toBe("stale");
        expect(await store.commitResult(ref, result(1), T0 + 40)).toBe("committed");
        const done = await store.getJobById(high.id);
        expect(done).toMatchObject({ status: "completed", progress: 100, completedAt: T0 + 40, leaseToken: null });
        expect(done?.result?.sha256).toBe(result(1).sha256);
        // A retried commit of the same result is acknowledged without change; another is stale.
        expect(await store.commitResult(ref, result(1), T0 + 50)).toBe("duplicate");
        expect(await store.commitResult(ref, result(1, "ef".repeat(32)), T0 + 50)).toBe("stale");
        expect((await store.getJobById(high.id))?.completedAt).toBe(T0 + 40);
      });

      it("matches model and GPU requirements", async () => {
        const big = (await store.createJob(newJob({ requirements: { gpu_type: "v100", min_vram_gb: 16, gpu_count: 2 } }), T0)).job;
        const other = (await store.createJob(newJob({ model: "distilgpt2" }), T0 + 1)).job;
        expect(await store.claimNextJob(miner({ models: ["llama"] }), T0 + 2, TTL)).toBeNull();
        // One fitting V100 is not two.
        const oneGpu = miner({ gpus: [gpu("Tesla V100-SXM2-16GB", 16160)] });
        expect(await store.claimNextJob(oneGpu, T0 + 2, TTL)).toBeNull();
        const twoSmall = miner({ gpus: [gpu("Tesla V100-SXM2-16GB", 8000), gpu("Tesla V100-SXM2-16GB", 8000, 1)] });
        expect(await store.claimNextJob(twoSmall, T0 + 2, TTL)).toBeNull();
        const wrongType = miner({ gpus: [gpu("NVIDIA A100 80GB", 81920), gpu("NVIDIA A100 80GB", 81920, 1)] });
        expect(await store.claimNextJob(wrongType, T0 + 2, TTL)).toBeNull();
        const fits = miner({ gpus: [gpu("Tesla V100-SXM2-16GB", 16160), gpu("Tesla V100-SXM2-16GB", 16160, 1)] });
        expect((await store.claimNextJob(fits, T0 + 2, TTL))?.job.id).toBe(big.id);
        // No requirements: any miner serving the model, CPU-only included.
        expect((await store.claimNextJob(miner({ models: ["gpt2", "distilgpt2"] }), T0 + 3, TTL))?.job.id).toBe(other.id);
      });

      it("a failed attempt is requeued with backoff until the budget is spent", async () => {
        const { job } = await store.createJob(newJob({ maxAttempts: 2 }), T0);
        const r1 = await claim();
        expect(await store.failAttempt(r1, { code: "engine_error", message: "boom", retryable: true }, T0 + 1, BACKOFF)).toBe("requeued");
        const requeued = await store.getJobById(job.id);
        expect(requeued).toMatchObject({ status: "queued", minerId: null, failures: 1, attempt: 1 });
        // Not claimable before the backoff is over.
        expect(await store.claimNextJob(miner(), T0 + 2, TTL)).toBeNull();
        const r2 = await claim(miner(), requeued!.notBefore);
        expect(r2.attempt).toBe(2);
        // The old attempt's verbs are fenced off.
        expect(await store.commitResult(r1, result(1), T0 + 5000)).toBe("stale");
        expect(await store.failAttempt(r2, { code: "engine_error", message: "boom", retryable: true }, T0 + 5000, BACKOFF)).toBe("failed");
        const failed = await store.getJobById(job.id);
        expect(failed).toMatchObject({ status: "failed", error: { code: "engine_error", message: "boom" } });
      });

      it("a non-retryable failure fails at once", async () => {
        const { job } = await store.createJob(newJob(), T0);
        const r = await claim();
        expect(await store.failAttempt(r, { code: "bad_input", message: "no", retryable: false }, T0 + 1, BACKOFF)).toBe("failed");
        expect((await store.getJobById(job.id))?.status).toBe("failed");
        expect(await store.failAttempt(r, { code: "bad_input", message: "no", retryable: false }, T0 + 2, BACKOFF)).toBe("stale");
      });

      it("releasing a lease requeues without burning the budget", async () => {
        const { job } = await store.createJob(newJob({ maxAttempts: 1 }), T0);
        for (let i = 1; i <= 3; i++) {
          const r = await claim(miner(), T0 + i * 10);
          expect(r.attempt).toBe(i);
          expect(await store.releaseLease(r, T0 + i * 10 + 1)).toBe("requeued");
          expect(await store.releaseLease(r, T0 + i * 10 + 2)).toBe("stale");
        }
        expect(await store.getJobById(job.id)).toMatchObject({ status: "queued", failures: 0, attempt: 3 });
      });

      it("reaps expired leases: requeue, fail when the budget is spent, cancel when cancel was requested", async () => {
        const a = (await store.createJob(newJob({ maxAttempts: 2 }), T0)).job;
        const b = (await store.createJob(newJob({ maxAttempts: 1 }), T0 + 1)).job;
        const c = (await store.createJob(newJob(), T0 + 2)).job;
        await claim(miner({ minerId: "miner_1" }), T0 + 10);
        await claim(miner({ minerId: "miner_2" }), T0 + 10);
        const rc = await claim(miner({ minerId: "miner_3" }), T0 + 10);
        await store.requestCancel("acme", rc.jobId, T0 + 11);
        // A renewed lease survives.
        expect(await store.reapExpiredLeases(T0 + 10 + TTL, BACKOFF)).toEqual([]);
        const reaped = await store.reapExpiredLeases(T0 + 10 + TTL + 1, BACKOFF);
        const byId = Object.fromEntries(reaped.map((r) => [r.jobId, r]));
        expect(byId[a.id]).toMatchObject({ outcome: "requeued", minerId: "miner_1", attempt: 1 });
        expect(byId[b.id]).toMatchObject({ outcome: "failed", minerId: "miner_2" });
        expect(byId[c.id]).toMatchObject({ outcome: "cancelled", minerId: "miner_3" });
        expect((await store.getJobById(a.id))?.status).toBe("queued");
        expect((await store.getJobById(b.id))?.error?.code).toBe("attempts_exhausted");
        expect((await store.getJobById(c.id))?.status).toBe("cancelled");
        expect(await store.reapExpiredLeases(T0 + 10 + TTL + 2, BACKOFF)).toEqual([]);
      });

      it("expires jobs queued past the queue TTL", async () => {
        const old = (await store.createJob(newJob(), T0)).job;
        const young = (await store.createJob(newJob(), T0 + 5000)).job;
        const reaped = await store.expireQueued(T0 + 6000, 5500);
        expect(reaped.map((r) => [r.jobId, r.outcome])).toEqual([[old.id, "expired"]]);
        expect((await store.getJobById(old.id))?.status).toBe("expired");
        expect((await store.getJobById(young.id))?.status).toBe("queued");
      });

      it("times out running attempts past timeout_seconds and names their miner", async () => {
        const { job } = await store.createJob(newJob({ timeoutSeconds: 5 }), T0);
        const r = await claim(miner({ minerId: "miner_slow" }));
        await store.markRunning(r, T0 + 100, 60_000);
        expect(await store.timeOutRunning(T0 + 100 + 5000)).toEqual([]);
        const out = await store.timeOutRunning(T0 + 100 + 5001);
        expect(out).toEqual([{ jobId: job.id, attempt: 1, minerId: "miner_slow", outcome: "timed_out" }]);
        expect((await store.getJobById(job.id))?.status).toBe("timed_out");
        expect(await store.commitResult(r, result(1), T0 + 6000)).toBe("stale");
      });

      it("lists the jobs a miner holds", async () => {
        await store.createJob(newJob(), T0);
        await store.createJob(newJob(), T0 + 1);
        await store.createJob(newJob(), T0 + 2);
        const r1 = await claim(miner({ minerId: "miner_x" }));
        const r2 = await claim(miner({ minerId: "miner_x" }));
        await claim(miner({ minerId: "miner_y" }));
        await store.markRunning(r2, T0 + 5, TTL);
        await store.commitResult(r1, result(1), T0 + 6);
        const held = await store.listLeasedBy("miner_x");
        expect(held.map((j) => j.id)).toEqual([r2.jobId]);
      });
    });

    describe("events", () => {
      it("records every state change in order, after a given seq", async () => {
        const { job } = await store.createJob(newJob(), T0);
        const r = await claim();
        await store.markRunning(r, T0 + 1, TTL);
        await store.commitResult(r, result(1), T0 + 2);
        const events = await store.listEvents(job.id, 0);
        expect(events.map((e) => e.type)).toEqual(["queued", "assigned", "running", "completed"]);
        expect(events.map((e) => e.seq)).toEqual([1, 2, 3, 4]);
        expect(events[1]!.data).toMatchObject({ attempt: 1, miner_id: "miner_a" });
        expect((await store.listEvents(job.id, 2)).map((e) => e.type)).toEqual(["running", "completed"]);
        expect(await store.listEvents("job_unknown", 0)).toEqual([]);
      });
    });

    describe("keys", () => {
      it("creates keys shown once, authenticates by kind, and revokes", async () => {
        const { record, key } = await store.createKey("client", "laptop", "acme", T0);
        expect(key).toMatch(/^aitbc_ck_/);
        expect(record).toMatchObject({ kind: "client", name: "laptop", tenant: "acme", revokedAt: null });
        const m = await store.createKey("miner", "rig", "ops", T0);
        expect(m.key).toMatch(/^aitbc_mk_/);
        expect((await store.authenticate(key, "client"))?.id).toBe(record.id);
        expect(await store.authenticate(key, "miner")).toBeNull();
        expect((await store.authenticate(m.key, "miner"))?.tenant).toBe("ops");
        expect(await store.authenticate(m.key, "client")).toBeNull();
        // A tampered secret with the right id is refused.
        const tampered = key.slice(0, -1) + (key.endsWith("A") ? "B" : "A");
        expect(await store.authenticate(tampered, "client")).toBeNull();
        expect(await store.authenticate("", "client")).toBeNull();
        expect((await store.listKeys()).map((k) => k.id).sort()).toEqual([record.id, m.record.id].sort());
        // Only hashes are stored: the secret never appears in what the store returns.
        expect(JSON.stringify(await store.listKeys())).not.toContain(key.split("_").pop());
        expect(await store.revokeKey(record.id, T0 + 1)).toBe(true);
        expect(await store.revokeKey(record.id, T0 + 2)).toBe(false);
        expect(await store.authenticate(key, "client")).toBeNull();
        expect((await store.listKeys()).find((k) => k.id === record.id)?.revokedAt).toBe(T0 + 1);
      });
    });

    describe("durability", () => {
      it("keeps every job, event and key unchanged across a reopen", async () => {
        if (h.reopen === undefined) return;
        const a = (await store.createJob(newJob(), T0)).job;
        await store.createJob(newJob({ priority: "high" }), T0 + 1);
        const r = await claim();
        await store.markRunning(r, T0 + 2, TTL);
        await store.commitResult(r, result(1), T0 + 3);
        const { key } = await store.createKey("client", "k", "acme", T0);
        const before = await store.listJobs("acme", { limit: 100 });
        const events = await store.listEvents(r.jobId, 0);
        store = await h.reopen();
        expect(await store.listJobs("acme", { limit: 100 })).toEqual(before);
        expect(await store.listEvents(r.jobId, 0)).toEqual(events);
        expect((await store.getJob("acme", a.id))?.status).toBe("queued");
        expect((await store.authenticate(key, "client"))?.tenant).toBe("acme");
      });
    });
  });
}
