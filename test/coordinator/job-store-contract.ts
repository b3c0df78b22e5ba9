import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { GpuInfo } from "../../src/protocol/frames.js";
import { resolveGenerationParameters } from "../../src/protocol/generation.js";
import type { JobState } from "../../src/protocol/version.js";
import type { JobEvents } from "../../src/coordinator/store/job-events.js";
import type {
  Assignment,
  JobEvent,
  JobRecord,
  JobStore,
  LeaseRef,
  MinerCapabilities,
  NewJob,
  StoredResult,
} from "../../src/coordinator/store/job-store.js";
import { InvalidCursorError } from "../../src/coordinator/store/cursor.js";
import { IdempotencyMismatchError } from "../../src/coordinator/store/store-errors.js";

/** What a backend's test file hands the contract: a fresh, empty store and how to reopen it. */
export interface StoreHarness {
  store: JobStore;
  /** Opens the same database again (the contract closes the old store first). */
  reopen?: () => Promise<JobStore>;
  /** The store's change fan-out, when the backend publishes one (needed for the publish test). */
  events?: JobEvents;
  cleanup: () => Promise<void>;
}

const T0 = 1_700_000_000_000;
const TTL = 30_000;
const BACKOFF = 1_000;

const H200: GpuInfo = { index: 0, name: "NVIDIA H200", vram_total_mb: 143771, vram_free_mb: 143000 };
const RTX4090: GpuInfo = { index: 0, name: "NVIDIA GeForce RTX 4090", vram_total_mb: 24564, vram_free_mb: 24000 };

function gpuMiner(id: string, gpus: GpuInfo[], models = ["gpt2"]): MinerCapabilities {
  return { minerId: id, gpus, models };
}
const cpuMiner = (id = "m-cpu", models = ["gpt2"]): MinerCapabilities => ({ minerId: id, gpus: [], models });

/** A job as the client API would create it (the contract's default; other store tests reuse it). */
export function newJob(over: Partial<NewJob> = {}): NewJob {
  return {
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
  };
}

function ref(a: Assignment): LeaseRef {
  return { jobId: a.job.id, attempt: a.attempt, leaseToken: a.leaseToken };
}

function result(attempt: number, sha = "ab".repeat(32)): StoredResult {
  return {
    sha256: sha,
    bytes: 12,
    location: "results/x.json",
    finishReason: "length",
    usage: { prompt_tokens: 1, completion_tokens: 11 },
    tokensPerSecond: 100,
    attempt,
  };
}

/**
 * The behaviour every JobStore backend must show (DESIGN.md §3; SQLite now, PostgreSQL later).
 * Times are explicit numbers, so nothing here sleeps or depends on the clock.
 */
export function jobStoreContract(name: string, makeStore: () => Promise<StoreHarness>): void {
  describe(`JobStore contract: ${name}`, () => {
    let h: StoreHarness;
    let store: JobStore;

    beforeEach(async () => {
      h = await makeStore();
      store = h.store;
    });
    afterEach(async () => {
      await h.cleanup();
    });

    async function create(over: Partial<NewJob> = {}, now = T0): Promise<JobRecord> {
      const { job, created } = await store.createJob(newJob(over), now);
      expect(created).toBe(true);
      return job;
    }

    /** Claims the next job for a (CPU) miner and asserts it is the expected one. */
    async function claim(jobId: string, now = T0, miner = cpuMiner()): Promise<Assignment> {
      const a = await store.claimNextJob(miner, now, TTL);
      expect(a?.job.id).toBe(jobId);
      return a!;
    }

    async function status(jobId: string): Promise<JobState | undefined> {
      return (await store.getJobById(jobId))?.status;
    }

    describe("createJob", () => {
      it("stores a queued job with its fields", async () => {
        const job = await create({ priority: "high", requirements: { gpu_type: "H200" } }, T0 + 5);
        expect(job.id).toMatch(/^job_/);
        expect(job).toMatchObject({
          tenant: "acme",
          model: "gpt2",
          status: "queued",
          priority: "high",
          requirements: { gpu_type: "H200" },
          attempt: 0,
          failures: 0,
          maxAttempts: 3,
          createdAt: T0 + 5,
          leaseToken: null,
          minerId: null,
          cancelRequested: false,
          result: null,
          error: null,
        });
        expect(job.parameters.seed).toBe(7);
        expect(await store.getJob("acme", job.id)).toEqual(job);
      });

      it("returns the same job for a repeated idempotency key and body", async () => {
        const idem = { key: "k1", requestHash: "h1" };
        const first = await store.createJob(newJob({ idempotency: idem }), T0);
        const again = await store.createJob(newJob({ idempotency: idem }), T0 + 10);
        expect(first.created).toBe(true);
        expect(again.created).toBe(false);
        expect(again.job.id).toBe(first.job.id);
        expect((await store.listJobs("acme", { limit: 10 })).total).toBe(1);
        // The key is per tenant: another tenant's same key is a different job.
        const other = await store.createJob(newJob({ tenant: "globex", idempotency: idem }), T0);
        expect(other.created).toBe(true);
        expect(other.job.id).not.toBe(first.job.id);
      });

      it("rejects a reused idempotency key with a different body", async () => {
        await store.createJob(newJob({ idempotency: { key: "k1", requestHash: "h1" } }), T0);
        await expect(store.createJob(newJob({ idempotency: { key: "k1", requestHash: "h2" } }), T0)).rejects.toBeInstanceOf(
          IdempotencyMismatchError,
        );
        expect((await store.listJobs("acme", { limit: 10 })).total).toBe(1);
      });
    });

    describe("getJob / listJobs / listHistory", () => {
      it("hides another tenant's job", async () => {
        const job = await create();
        expect(await store.getJob("globex", job.id)).toBeNull();
        expect(await store.getJob("acme", "job_doesnotexist")).toBeNull();
        expect((await store.listJobs("globex", { limit: 10 })).total).toBe(0);
      });

      it("reads several jobs by id at once, any tenant's, leaving out unknown ids", async () => {
        const a = await create();
        const b = await create({ tenant: "globex" });
        await create();
        const got = await store.getJobsById([b.id, "job_doesnotexist", a.id]);
        expect(got.map((j) => j.id).sort()).toEqual([a.id, b.id].sort());
        expect(got.find((j) => j.id === b.id)).toMatchObject({ tenant: "globex", status: "queued" });
        expect(await store.getJobsById([])).toEqual([]);
      });

      it("pages through every job once, newest first, with a status filter and totals", async () => {
        const ids: string[] = [];
        // Two jobs share each timestamp so ties within a millisecond are paged too.
        for (let i = 0; i < 11; i++) ids.push((await create({}, T0 + Math.floor(i / 2) * 1000)).id);
        await create({ tenant: "globex" });
        const cancelled = ids[3]!;
        expect((await store.requestCancel("acme", cancelled, T0 + 20_000))?.outcome).toBe("cancelled");

        const seen: JobRecord[] = [];
        let cursor: string | undefined;
        let pages = 0;
        for (;;) {
          const page = await store.listJobs("acme", { limit: 4, ...(cursor === undefined ? {} : { cursor }) });
          expect(page.total).toBe(11);
          expect(page.items.length).toBeLessThanOrEqual(4);
          seen.push(...page.items);
          pages++;
          if (page.nextCursor === null) break;
          expect(page.items).toHaveLength(4);
          cursor = page.nextCursor;
        }
        expect(pages).toBe(3);
        expect(seen.map((j) => j.id).sort()).toEqual([...ids].sort());
        expect(new Set(seen.map((j) => j.id)).size).toBe(11);
        for (let i = 1; i < seen.length; i++) expect(seen[i - 1]!.createdAt).toBeGreaterThanOrEqual(seen[i]!.createdAt);
        expect(seen[0]!.createdAt).toBe(T0 + 5000);

        const exact = await store.listJobs("acme", { limit: 11 });
        expect(exact.items).toHaveLength(11);
        expect(exact.nextCursor).toBeNull();

        const onlyCancelled = await store.listJobs("acme", { status: "cancelled", limit: 10 });
        expect(onlyCancelled.total).toBe(1);
        expect(onlyCancelled.items.map((j) => j.id)).toEqual([cancelled]);
        const queued = await store.listJobs("acme", { status: "queued", limit: 100 });
        expect(queued.total).toBe(10);
        expect(queued.items.every((j) => j.status === "queued")).toBe(true);
      });

      it("rejects a cursor it did not issue", async () => {
        await create();
        await expect(store.listJobs("acme", { limit: 10, cursor: "not-a-cursor" })).rejects.toBeInstanceOf(InvalidCursorError);
        await expect(
          store.listHistory("acme", { from: 0, to: T0 * 2, limit: 10, cursor: Buffer.from("[1]").toString("base64url") }),
        ).rejects.toBeInstanceOf(InvalidCursorError);
      });

      it("lists only finished jobs in an inclusive time range, paged", async () => {
        const finished: string[] = [];
        // Cancel queued jobs at T0+1000, +2000, … +5000: each finishes at that time.
        for (let i = 1; i <= 5; i++) {
          const job = await create({}, T0);
          await store.requestCancel("acme", job.id, T0 + i * 1000);
          finished.push(job.id);
        }
        await create({}, T0); // still queued: never in history
        await create({}, T0);
        expect(await store.claimNextJob(cpuMiner(), T0, TTL)).not.toBeNull(); // assigned: not in history either

        const all = await store.listHistory("acme", { from: T0, to: T0 + 10_000, limit: 100 });
        expect(all.total).toBe(5);
        expect(all.items.map((j) => j.id)).toEqual([...finished].reverse());

        const range = await store.listHistory("acme", { from: T0 + 2000, to: T0 + 4000, limit: 100 });
        expect(range.items.map((j) => j.completedAt)).toEqual([T0 + 4000, T0 + 3000, T0 + 2000]);

        const p1 = await store.listHistory("acme", { from: T0, to: T0 + 10_000, limit: 2 });
        expect(p1.items).toHaveLength(2);
        expect(p1.total).toBe(5);
        const p2 = await store.listHistory("acme", { from: T0, to: T0 + 10_000, limit: 2, cursor: p1.nextCursor! });
        const p3 = await store.listHistory("acme", { from: T0, to: T0 + 10_000, limit: 2, cursor: p2.nextCursor! });
        expect(p3.nextCursor).toBeNull();
        expect([...p1.items, ...p2.items, ...p3.items].map((j) => j.id)).toEqual([...finished].reverse());
        expect((await store.listHistory("globex", { from: 0, to: T0 * 2, limit: 10 })).total).toBe(0);
      });
    });

    describe("requestCancel", () => {
      it("cancels a queued job at once", async () => {
        const job = await create();
        const out = await store.requestCancel("acme", job.id, T0 + 1);
        expect(out?.outcome).toBe("cancelled");
        expect(out?.job).toMatchObject({ status: "cancelled", completedAt: T0 + 1 });
        expect(await store.claimNextJob(cpuMiner(), T0 + 2, TTL)).toBeNull();
      });

      it("returns null for another tenant's job and leaves it alone", async () => {
        const job = await create();
        expect(await store.requestCancel("globex", job.id, T0)).toBeNull();
        expect(await status(job.id)).toBe("queued");
      });

      it("reports a conflict for a finished job", async () => {
        const job = await create();
        const a = await claim(job.id);
        expect(await store.commitResult(ref(a), result(a.attempt), T0 + 1)).toBe("committed");
        const out = await store.requestCancel("acme", job.id, T0 + 2);
        expect(out?.outcome).toBe("conflict");
        expect(out?.job.status).toBe("completed");
      });

      it("asks a running job to stop; the miner's failure ends it cancelled", async () => {
        const job = await create();
        const a = await claim(job.id);
        expect(await store.markRunning(ref(a), T0 + 1, TTL)).toBe(true);
        const out = await store.requestCancel("acme", job.id, T0 + 2);
        expect(out?.outcome).toBe("cancel_requested");
        expect(out?.job).toMatchObject({ status: "running", cancelRequested: true });
        expect(await store.renewLease(ref(a), T0 + 3, TTL)).toEqual({ renewed: true, cancelRequested: true });
        // Even a retryable failure does not requeue a job the client cancelled.
        expect(await store.failAttempt(ref(a), { code: "engine_error", message: "x", retryable: true }, T0 + 4, BACKOFF)).toBe(
          "cancelled",
        );
        expect(await store.getJobById(job.id)).toMatchObject({ status: "cancelled", leaseToken: null, completedAt: T0 + 4 });
      });

      it("an assigned job asked to cancel and handed back ends cancelled", async () => {
        const job = await create();
        const a = await claim(job.id);
        expect((await store.requestCancel("acme", job.id, T0 + 1))?.outcome).toBe("cancel_requested");
        expect(await store.releaseLease(ref(a), T0 + 2)).toBe("cancelled");
        expect(await status(job.id)).toBe("cancelled");
        expect(await store.claimNextJob(cpuMiner(), T0 + 3, TTL)).toBeNull();
      });

      it("a cancel-requested job whose lease expires ends cancelled, not requeued", async () => {
        const job = await create();
        const a = await claim(job.id);
        await store.markRunning(ref(a), T0 + 1, TTL);
        await store.requestCancel("acme", job.id, T0 + 2);
        const reaped = await store.reapExpiredLeases(T0 + 1 + TTL + 1, BACKOFF);
        expect(reaped).toEqual([{ jobId: job.id, attempt: 1, minerId: "m-cpu", outcome: "cancelled" }]);
        expect(await status(job.id)).toBe("cancelled");
        expect(await store.claimNextJob(cpuMiner(), T0 + 10 * TTL, TTL)).toBeNull();
      });
    });

    describe("claimNextJob", () => {
      it("takes high before normal before low, then the oldest", async () => {
        const low = await create({ priority: "low" }, T0);
        const normal1 = await create({ priority: "normal" }, T0 + 1);
        const high = await create({ priority: "high" }, T0 + 2);
        const normal2 = await create({ priority: "normal" }, T0 + 3);
        const order: string[] = [];
        for (let i = 0; i < 4; i++) order.push((await store.claimNextJob(cpuMiner(`m${i}`), T0 + 10, TTL))!.job.id);
        expect(order).toEqual([high.id, normal1.id, normal2.id, low.id]);
        expect(await store.claimNextJob(cpuMiner(), T0 + 10, TTL)).toBeNull();
      });

      it("only hands a miner models it serves", async () => {
        const other = await create({ model: "gpt2-medium" });
        const mine = await create({ model: "gpt2" }, T0 + 1);
        expect((await store.claimNextJob(cpuMiner("a", ["gpt2"]), T0 + 2, TTL))?.job.id).toBe(mine.id);
        expect(await store.claimNextJob(cpuMiner("b", ["gpt2"]), T0 + 2, TTL)).toBeNull();
        expect(await store.claimNextJob(cpuMiner("c", []), T0 + 2, TTL)).toBeNull();
        expect((await store.claimNextJob(cpuMiner("d", ["gpt2-medium"]), T0 + 2, TTL))?.job.id).toBe(other.id);
      });

      it("matches gpu_type, gpu_count and min_vram_gb; skips jobs the miner cannot run", async () => {
        const needsH200 = await create({ requirements: { gpu_type: "H200" } }, T0);
        const needsTwo = await create({ requirements: { gpu_count: 2, min_vram_gb: 80 } }, T0 + 1);
        const needsVram = await create({ requirements: { min_vram_gb: 100 } }, T0 + 2);
        const anywhere = await create({}, T0 + 3);

        // A CPU miner passes over every GPU job and takes the one with no requirements.
        expect((await store.claimNextJob(cpuMiner(), T0 + 10, TTL))?.job.id).toBe(anywhere.id);
        // A 4090 (24 GB) fits none of the rest.
        expect(await store.claimNextJob(gpuMiner("m4090", [RTX4090]), T0 + 10, TTL)).toBeNull();
        // One H200: the gpu_type job first (oldest), then the 100 GB job; never the two-GPU job.
        expect((await store.claimNextJob(gpuMiner("h1", [H200]), T0 + 10, TTL))?.job.id).toBe(needsH200.id);
        expect((await store.claimNextJob(gpuMiner("h1", [H200]), T0 + 10, TTL))?.job.id).toBe(needsVram.id);
        expect(await store.claimNextJob(gpuMiner("h1", [H200]), T0 + 10, TTL)).toBeNull();
        // Two H200s take the two-GPU job.
        const a = await store.claimNextJob(gpuMiner("h2", [H200, { ...H200, index: 1 }]), T0 + 10, TTL);
        expect(a?.job.id).toBe(needsTwo.id);
        expect(a?.job.minerId).toBe("h2");
      });

      it("claimJobs takes up to max of the jobs the miner can run, best first, each with its own lease and event", async () => {
        const low = await create({ priority: "low" }, T0);
        const needsGpu = await create({ requirements: { gpu_type: "H200" } }, T0 + 1);
        const normal1 = await create({ priority: "normal" }, T0 + 2);
        const high = await create({ priority: "high" }, T0 + 3);
        const normal2 = await create({ priority: "normal" }, T0 + 4);
        expect(await store.claimJobs(cpuMiner(), T0 + 10, TTL, 0)).toEqual([]);
        const first = await store.claimJobs(cpuMiner("a"), T0 + 10, TTL, 3);
        expect(first.map((x) => x.job.id)).toEqual([high.id, normal1.id, normal2.id]);
        expect(new Set(first.map((x) => x.leaseToken)).size).toBe(3);
        for (const x of first) {
          expect(x).toMatchObject({ attempt: 1, leaseExpiresAt: T0 + 10 + TTL, job: { status: "assigned", minerId: "a", attempt: 1 } });
          expect((await store.listEvents(x.job.id, 0)).map((e) => [e.seq, e.type, e.data])).toEqual([
            [1, "queued", expect.anything()],
            [2, "assigned", { attempt: 1, miner_id: "a" }],
          ]);
        }
        // Asking for more than is left (a CPU miner cannot take the GPU job) gets what is left.
        expect((await store.claimJobs(cpuMiner("b"), T0 + 10, TTL, 5)).map((x) => x.job.id)).toEqual([low.id]);
        expect(await store.claimJobs(cpuMiner("c"), T0 + 10, TTL, 5)).toEqual([]);
        expect(await status(needsGpu.id)).toBe("queued");
        // A claim's leases are fenced like any other: the first one can run.
        expect(await store.markRunning({ jobId: high.id, attempt: 1, leaseToken: first[0]!.leaseToken }, T0 + 11, TTL)).toBe(true);
      });

      it("claimJobs of jobs without GPU requirements: best first, each lease the one stored, each event logged", async () => {
        const normal1 = await create({ priority: "normal" }, T0);
        const low = await create({ priority: "low" }, T0 + 1);
        const high = await create({ priority: "high" }, T0 + 2);
        const normal2 = await create({ priority: "normal" }, T0 + 3);
        const later = await create({ priority: "normal", requirements: { gpu_type: "H200" } }, T0 + 4);
        const got = await store.claimJobs(cpuMiner("p"), T0 + 10, TTL, 3);
        expect(got.map((x) => x.job.id)).toEqual([high.id, normal1.id, normal2.id]);
        for (const x of got) {
          expect(x.job).toMatchObject({ status: "assigned", minerId: "p", attempt: 1, leaseToken: x.leaseToken, assignedAt: T0 + 10 });
          expect(await store.getJobById(x.job.id)).toMatchObject({ status: "assigned", leaseToken: x.leaseToken });
          expect((await store.listEvents(x.job.id, 0)).map((e) => [e.seq, e.type, e.data])).toEqual([
            [1, "queued", expect.anything()],
            [2, "assigned", { attempt: 1, miner_id: "p" }],
          ]);
          expect(await store.markRunning({ jobId: x.job.id, attempt: 1, leaseToken: x.leaseToken, minerId: "p" }, T0 + 11, TTL)).toBe(true);
        }
        // Then the one left that it can run, passing over the GPU job behind it.
        expect((await store.claimJobs(cpuMiner("p"), T0 + 12, TTL, 4)).map((x) => x.job.id)).toEqual([low.id]);
        expect(await status(later.id)).toBe("queued");
      });

      it("a miner of several models claims across them, best first, and none of a model it does not serve", async () => {
        const a = await create({ model: "gpt2" }, T0);
        const b = await create({ model: "gpt2-medium", priority: "high" }, T0 + 1);
        await create({ model: "gpt2-xl", priority: "high" }, T0 + 2);
        const c = await create({ model: "gpt2-medium" }, T0 + 3);
        const got = await store.claimJobs(cpuMiner("multi", ["gpt2", "gpt2-medium"]), T0 + 10, TTL, 8);
        expect(got.map((x) => x.job.id)).toEqual([b.id, a.id, c.id]);
        expect(new Set(got.map((x) => x.leaseToken)).size).toBe(3);
      });

      it("gives each claim a new attempt and a fresh lease token, and respects the requeue backoff", async () => {
        const job = await create();
        const a1 = await claim(job.id, T0);
        expect(a1.attempt).toBe(1);
        expect(a1.leaseExpiresAt).toBe(T0 + TTL);
        expect(a1.job).toMatchObject({ status: "assigned", attempt: 1, leaseToken: a1.leaseToken, minerId: "m-cpu", assignedAt: T0 });

        expect(await store.failAttempt(ref(a1), { code: "engine_error", message: "oom", retryable: true }, T0 + 100, BACKOFF)).toBe(
          "requeued",
        );
        const requeued = await store.getJobById(job.id);
        expect(requeued).toMatchObject({ status: "queued", leaseToken: null, minerId: null, failures: 1 });
        const notBefore = requeued!.notBefore;
        expect(notBefore).toBeGreaterThan(T0 + 100);

        expect(await store.claimNextJob(cpuMiner(), notBefore - 1, TTL)).toBeNull();
        const a2 = await claim(job.id, notBefore);
        expect(a2.attempt).toBe(2);
        expect(a2.leaseToken).not.toBe(a1.leaseToken);
      });
    });

    describe("fenced miner verbs", () => {
      it("markRunning and renewLease need the exact (job, attempt, token) triple", async () => {
        const job = await create();
        const a = await claim(job.id);
        const wrongToken = { ...ref(a), leaseToken: `${a.leaseToken.slice(0, -1)}${a.leaseToken.endsWith("A") ? "B" : "A"}` };
        const wrongAttempt = { ...ref(a), attempt: a.attempt + 1 };
        const wrongJob = { ...ref(a), jobId: "job_doesnotexist" };
        // The right triple from a miner the lease was not granted to (a leaked token).
        const otherMiner = { ...ref(a), minerId: "m-somebody-else" };
        for (const bad of [wrongToken, wrongAttempt, wrongJob, otherMiner]) {
          expect(await store.markRunning(bad, T0 + 1, TTL)).toBe(false);
          expect(await store.renewLease(bad, T0 + 1, TTL)).toEqual({ renewed: false, cancelRequested: false });
          expect(await store.commitResult(bad, result(bad.attempt), T0 + 1)).toBe("stale");
          expect(await store.failAttempt(bad, { code: "x", message: "x", retryable: false }, T0 + 1, BACKOFF)).toBe("stale");
          expect(await store.releaseLease(bad, T0 + 1)).toBe("stale");
        }
        expect(await status(job.id)).toBe("assigned");

        // Presented by the miner it was granted to (the gateway always says which miner), or without one.
        expect(await store.markRunning({ ...ref(a), minerId: a.job.minerId! }, T0 + 5, TTL)).toBe(true);
        expect(await store.markRunning(ref(a), T0 + 6, TTL)).toBe(false); // already running
        expect(await store.getJobById(job.id)).toMatchObject({
          status: "running",
          startedAt: T0 + 5,
          attemptStartedAt: T0 + 5,
          leaseExpiresAt: T0 + 5 + TTL,
        });
        expect(await store.renewLease(ref(a), T0 + 10, TTL, 42)).toEqual({ renewed: true, cancelRequested: false });
        expect(await store.getJobById(job.id)).toMatchObject({ progress: 42, leaseExpiresAt: T0 + 10 + TTL });
      });

      it("commitResult: committed once, duplicate for the same attempt again, stale otherwise", async () => {
        const job = await create();
        const a = await claim(job.id);
        await store.markRunning(ref(a), T0 + 1, TTL);
        expect(await store.commitResult(ref(a), result(a.attempt), T0 + 2)).toBe("committed");
        expect(await store.commitResult(ref(a), result(a.attempt), T0 + 3)).toBe("duplicate");
        expect(await store.commitResult(ref(a), result(a.attempt, "cd".repeat(32)), T0 + 3)).toBe("stale");
        const done = await store.getJobById(job.id);
        expect(done).toMatchObject({ status: "completed", progress: 100, completedAt: T0 + 2, leaseToken: null });
        expect(done?.result).toEqual(result(1));
      });

      it("after a requeue the old attempt's result is refused and the new attempt keeps the job", async () => {
        const job = await create();
        const a1 = await claim(job.id, T0);
        await store.markRunning(ref(a1), T0 + 1, TTL);
        const reaped = await store.reapExpiredLeases(T0 + 1 + TTL + 1, BACKOFF);
        expect(reaped).toEqual([{ jobId: job.id, attempt: 1, minerId: "m-cpu", outcome: "requeued" }]);
        const a2 = await claim(job.id, T0 + 10 * TTL, cpuMiner("m-2"));
        expect(a2.attempt).toBe(2);

        expect(await store.commitResult(ref(a1), result(1), T0 + 10 * TTL + 1)).toBe("stale");
        expect(await store.renewLease(ref(a1), T0 + 10 * TTL + 1, TTL)).toEqual({ renewed: false, cancelRequested: false });
        expect(await store.getJobById(job.id)).toMatchObject({ status: "assigned", attempt: 2, minerId: "m-2", leaseToken: a2.leaseToken });
        expect(await store.commitResult(ref(a2), result(2), T0 + 10 * TTL + 2)).toBe("committed");
        expect((await store.getJobById(job.id))?.result?.attempt).toBe(2);
      });
    });

    describe("failAttempt / releaseLease", () => {
      it("requeues retryable failures until max_attempts, then fails", async () => {
        const job = await create({ maxAttempts: 2 });
        const a1 = await claim(job.id, T0);
        const f = { code: "engine_error", message: "boom", retryable: true };
        expect(await store.failAttempt(ref(a1), f, T0 + 1, BACKOFF)).toBe("requeued");
        const a2 = await claim(job.id, T0 + 100 * BACKOFF);
        expect(await store.failAttempt(ref(a2), f, T0 + 100 * BACKOFF + 1, BACKOFF)).toBe("failed");
        expect(await store.getJobById(job.id)).toMatchObject({
          status: "failed",
          failures: 1,
          attempt: 2,
          error: { code: "engine_error", message: "boom" },
          completedAt: T0 + 100 * BACKOFF + 1,
        });
      });

      it("fails at once on a non-retryable failure", async () => {
        const job = await create();
        const a = await claim(job.id);
        expect(await store.failAttempt(ref(a), { code: "bad_input", message: "no", retryable: false }, T0 + 1, BACKOFF)).toBe("failed");
        expect((await store.getJobById(job.id))?.error?.code).toBe("bad_input");
      });

      it("a miner's timed_out ends the job timed_out only once its deadline has passed; cancelled only when a client asked", async () => {
        // timeoutSeconds is 60: the deadline is assigned_at + 60 s.
        const j1 = await create({}, T0);
        const j2 = await create({}, T0 + 1);
        const j3 = await create({}, T0 + 2);
        const a1 = await claim(j1.id, T0 + 3);
        const a2 = await claim(j2.id, T0 + 3);
        const a3 = await claim(j3.id, T0 + 3);
        // Seconds after the assign, "timed_out" is a claim, not a fact: an ordinary failure.
        expect(await store.failAttempt(ref(a1), { code: "timed_out", message: "t", retryable: false }, T0 + 5_000, BACKOFF)).toBe("failed");
        expect(await store.getJobById(j1.id)).toMatchObject({ status: "failed", error: { code: "miner_claimed_timed_out" } });
        // No cancel was requested: "cancelled" is a failure too (retryable here, so requeued).
        expect(await store.failAttempt(ref(a2), { code: "cancelled", message: "c", retryable: true }, T0 + 5_000, BACKOFF)).toBe("requeued");
        expect(await store.getJobById(j2.id)).toMatchObject({ status: "queued", failures: 1 });
        expect((await store.listEvents(j2.id, 0)).at(-1)).toMatchObject({ type: "requeued", data: { reason: "miner_claimed_cancelled" } });
        // Past the deadline the miner's timeout is the job's.
        expect(await store.failAttempt(ref(a3), { code: "timed_out", message: "t", retryable: false }, T0 + 3 + 60_000, BACKOFF)).toBe("timed_out");
        expect(await store.getJobById(j3.id)).toMatchObject({ status: "timed_out", error: { code: "timed_out" } });
      });

      it("the requeue backoff doubles with each failure and stops growing at five minutes", async () => {
        const job = await create({ maxAttempts: 100 });
        let now = T0;
        const waits: number[] = [];
        for (let i = 0; i < 12; i++) {
          const a = await claim(job.id, now);
          expect(await store.failAttempt(ref(a), { code: "engine_error", message: "x", retryable: true }, now, BACKOFF)).toBe("requeued");
          const notBefore = (await store.getJobById(job.id))!.notBefore;
          waits.push(notBefore - now);
          now = notBefore;
        }
        expect(waits).toEqual([1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 64_000, 128_000, 256_000, 300_000, 300_000, 300_000]);
      });

      it("a released job is requeued at once without burning the attempt budget", async () => {
        const job = await create({ maxAttempts: 1 });
        const a1 = await claim(job.id, T0);
        await store.markRunning(ref(a1), T0 + 1, TTL);
        expect(await store.releaseLease(ref(a1), T0 + 2)).toBe("requeued");
        expect(await store.getJobById(job.id)).toMatchObject({ status: "queued", failures: 0, minerId: null, leaseToken: null, progress: 0 });
        const a2 = await claim(job.id, T0 + 2);
        expect(a2.attempt).toBe(2);
        expect(await store.releaseLease(ref(a1), T0 + 3)).toBe("stale");
        expect(await store.releaseLease(ref(a2), T0 + 4, "key_revoked")).toBe("requeued");
        expect((await store.listEvents(job.id, 0)).at(-1)).toMatchObject({ type: "requeued", data: { attempt: 2, reason: "key_revoked" } });
      });
    });

    describe("reaper verbs", () => {
      it("reapExpiredLeases requeues until the budget is spent, then fails; live leases stay", async () => {
        const job = await create({ maxAttempts: 2 });
        const live = await create({}, T0 + 1);
        const a1 = await claim(job.id, T0);
        const t1 = T0 + TTL + 1;
        const aLive = await claim(live.id, t1 - 1);
        expect(await store.renewLease(ref(aLive), t1, TTL)).toEqual({ renewed: true, cancelRequested: false });

        expect(await store.reapExpiredLeases(t1, BACKOFF)).toEqual([{ jobId: job.id, attempt: a1.attempt, minerId: "m-cpu", outcome: "requeued" }]);
        expect(await store.getJobById(job.id)).toMatchObject({ status: "queued", failures: 1 });

        const t2 = t1 + 100 * BACKOFF;
        await claim(job.id, t2);
        const reaped = await store.reapExpiredLeases(t2 + TTL + 1, BACKOFF);
        expect(reaped.find((r) => r.jobId === job.id)?.outcome).toBe("failed");
        expect(await store.getJobById(job.id)).toMatchObject({ status: "failed", failures: 1, attempt: 2, leaseToken: null });
        expect(await status(live.id)).not.toBe("failed");
      });

      it("expireQueued expires only queued jobs older than the queue TTL", async () => {
        const taken = await create({}, T0 - 1);
        await claim(taken.id, T0);
        const old = await create({}, T0);
        const fresh = await create({}, T0 + 50_000);
        expect(await store.expireQueued(T0 + 60_001, 60_000)).toEqual([{ jobId: old.id, attempt: 0, minerId: null, outcome: "expired" }]);
        expect(await store.getJobById(old.id)).toMatchObject({ status: "expired", completedAt: T0 + 60_001, error: { code: "expired" } });
        expect(await status(fresh.id)).toBe("queued");
        expect(await status(taken.id)).toBe("assigned");
      });

      it("timeOutRunning ends attempts running past timeout_seconds", async () => {
        const slow = await create({ timeoutSeconds: 10 }, T0);
        const ok = await create({ timeoutSeconds: 100 }, T0 + 1);
        const sa = await claim(slow.id, T0 + 2);
        const oa = await claim(ok.id, T0 + 2);
        await store.markRunning(ref(sa), T0 + 3, 10 * TTL);
        await store.markRunning(ref(oa), T0 + 3, 10 * TTL);
        expect(await store.timeOutRunning(T0 + 3 + 10_000 - 1)).toEqual([]);
        expect(await store.timeOutRunning(T0 + 3 + 10_001)).toEqual([{ jobId: slow.id, attempt: 1, minerId: "m-cpu", outcome: "timed_out" }]);
        expect(await store.getJobById(slow.id)).toMatchObject({ status: "timed_out", leaseToken: null, error: { code: "timed_out" } });
        expect(await status(ok.id)).toBe("running");
        expect(await store.commitResult(ref(sa), result(1), T0 + 20_000)).toBe("stale");
      });

      it("listLeasedBy returns the miner's assigned and running jobs only", async () => {
        const j1 = await create({}, T0);
        const j2 = await create({}, T0 + 1);
        const j3 = await create({}, T0 + 2);
        const a1 = await claim(j1.id, T0 + 3, cpuMiner("m-a"));
        await claim(j2.id, T0 + 3, cpuMiner("m-a"));
        await claim(j3.id, T0 + 3, cpuMiner("m-b"));
        await store.markRunning(ref(a1), T0 + 4, TTL);
        expect((await store.listLeasedBy("m-a")).map((j) => j.id).sort()).toEqual([j1.id, j2.id].sort());
        await store.commitResult(ref(a1), result(1), T0 + 5);
        expect((await store.listLeasedBy("m-a")).map((j) => j.id)).toEqual([j2.id]);
        expect(await store.listLeasedBy("m-none")).toEqual([]);
      });
    });

    describe("queue counts", () => {
      it("countQueued filters by tenant and model; queuePosition counts jobs picked first", async () => {
        const a = await create({ priority: "normal" }, T0);
        const b = await create({ priority: "normal" }, T0 + 1);
        const c = await create({ priority: "high", tenant: "globex" }, T0 + 2);
        await create({ model: "gpt2-medium" }, T0 + 3);
        expect(await store.countQueued({})).toBe(4);
        expect(await store.countQueued({ tenant: "acme" })).toBe(3);
        expect(await store.countQueued({ tenant: "acme", model: "gpt2" })).toBe(2);
        expect(await store.queuePosition(c)).toBe(0);
        expect(await store.queuePosition(a)).toBe(1);
        expect(await store.queuePosition(b)).toBe(2);
        // A submit's one read: the same counts (and the tenant's usage) at once.
        expect(await store.submitCounts("acme", "gpt2")).toEqual({ usage: { fileBytes: 0, resultBytes: 0 }, queuedForTenant: 3, queuedForModel: 3 });
        expect(await store.submitCounts("nobody", "gpt2-large")).toEqual({ usage: { fileBytes: 0, resultBytes: 0 }, queuedForTenant: 0, queuedForModel: 0 });
      });

      it("readVersion stays while only reads happen and grows with each write, or is undefined throughout", async () => {
        const v0 = store.readVersion();
        const job = await create();
        const v1 = store.readVersion();
        await store.getJobById(job.id);
        await store.queuePosition(job);
        await store.countQueued({});
        expect(store.readVersion()).toBe(v1);
        await claim(job.id, T0 + 1);
        const v2 = store.readVersion();
        if (v0 === undefined) {
          expect([v1, v2]).toEqual([undefined, undefined]);
          return;
        }
        expect(v1).toBeGreaterThan(v0);
        expect(v2).toBeGreaterThan(v1!);
      });
    });

    describe("events", () => {
      it("appends one event per state change, in order, seq 1..n", async () => {
        const job = await create();
        const a = await claim(job.id, T0 + 1);
        await store.markRunning(ref(a), T0 + 2, TTL);
        await store.renewLease(ref(a), T0 + 3, TTL, 50); // progress is not a state change
        await store.commitResult(ref(a), result(1), T0 + 4);
        const events = await store.listEvents(job.id, 0);
        expect(events.map((e) => e.type)).toEqual(["queued", "assigned", "running", "completed"]);
        expect(events.map((e) => e.seq)).toEqual([1, 2, 3, 4]);
        expect(events.map((e) => e.at)).toEqual([T0, T0 + 1, T0 + 2, T0 + 4]);
        expect(events.every((e) => e.jobId === job.id)).toBe(true);
        expect((await store.listEvents(job.id, 2)).map((e) => e.seq)).toEqual([3, 4]);
        expect(await store.listEvents("job_doesnotexist", 0)).toEqual([]);
      });

      it("reads a job with its events after a seq, as getJobById and listEvents answer apart", async () => {
        const job = await create({ tenant: "globex", input: "a prompt with 'quotes', \"JSON\" and ünïcode" });
        const a = await claim(job.id, T0 + 1);
        await store.markRunning(ref(a), T0 + 2, TTL);
        await store.commitResult(ref(a), result(1), T0 + 4);
        const both = await store.jobWithEvents(job.id, 0);
        expect(both.job).toEqual(await store.getJobById(job.id));
        expect(both.job).toMatchObject({ tenant: "globex", status: "completed", result: { sha256: result(1).sha256 } });
        expect(both.events).toEqual(await store.listEvents(job.id, 0));
        expect(both.events.map((e) => [e.seq, e.type])).toEqual([[1, "queued"], [2, "assigned"], [3, "running"], [4, "completed"]]);
        expect((await store.jobWithEvents(job.id, 3)).events).toEqual(await store.listEvents(job.id, 3));
        expect((await store.jobWithEvents(job.id, 4)).events).toEqual([]);
        expect(await store.jobWithEvents("job_doesnotexist", 0)).toEqual({ job: null, events: [] });
      });

      it("publishes each change after it is committed, and nothing for a refused verb", async () => {
        expect(h.events, "the harness must pass the store's JobEvents").toBeDefined();
        const seen: { event: JobEvent; stored: JobState | undefined }[] = [];
        const pending: Promise<void>[] = [];
        const off = h.events!.onChange((event) => {
          pending.push(store.getJobById(event.jobId).then((j) => void seen.push({ event, stored: j?.status })));
        });
        try {
          const job = await create();
          const a = await claim(job.id, T0 + 1);
          expect(await store.markRunning({ ...ref(a), attempt: 9 }, T0 + 2, TTL)).toBe(false);
          await store.requestCancel("acme", job.id, T0 + 3);
          await store.releaseLease(ref(a), T0 + 4);
          await Promise.all(pending);
          expect(seen.map((s) => s.event.type)).toEqual(["queued", "assigned", "cancel_requested", "cancelled"]);
          expect(seen.map((s) => s.event.seq)).toEqual([1, 2, 3, 4]);
          // When a subscriber hears of a change the store already shows it.
          expect(seen[0]!.stored).toBeDefined();
          expect(seen.find((s) => s.event.type === "cancelled")?.stored).toBe("cancelled");
          expect(await store.listEvents(job.id, 0)).toEqual(seen.map((s) => s.event));
        } finally {
          off();
        }
      });
    });

    describe("the fleet", () => {
      const miner = (replica: string, instanceId: string | null = "inst-one-1") => ({ id: "miner_a", keyId: "k1", name: "rig-a", replica, instanceId, gpus: [H200], models: ["gpt2"], slots: 4 });

      it("a session bumps the miner's epoch; an older session can neither refresh nor close it", async () => {
        expect(await store.openMinerSession(miner("r1"), T0, T0)).toEqual({ opened: true, epoch: 1 });
        expect(await store.listConnectedMiners(T0)).toMatchObject([{ id: "miner_a", replica: "r1", epoch: 1, connected: true, gpus: [H200], models: ["gpt2"], slots: 4 }]);
        // The miner reconnects to another replica.
        expect(await store.openMinerSession(miner("r2"), T0 + 10, T0)).toEqual({ opened: true, epoch: 2 });
        await store.touchMiners("r1", [{ id: "miner_a", epoch: 1, draining: true }], T0 + 20);
        await store.closeMinerSession("miner_a", 1, T0 + 20);
        expect(await store.listConnectedMiners(T0)).toMatchObject([{ replica: "r2", epoch: 2, connected: true, lastSeenAt: T0 + 10, draining: false }]);
        await store.touchMiners("r2", [{ id: "miner_a", epoch: 2, draining: true }], T0 + 30);
        expect(await store.listConnectedMiners(T0 + 25)).toMatchObject([{ lastSeenAt: T0 + 30, draining: true }]);
        // Not seen since then: not listed.
        expect(await store.listConnectedMiners(T0 + 31)).toEqual([]);
        await store.closeMinerSession("miner_a", 2, T0 + 40);
        expect(await store.listConnectedMiners(T0)).toEqual([]);
      });

      it("another instance is refused while the session is live, and takes over once it closed or went stale", async () => {
        expect(await store.openMinerSession(miner("r1", "inst-one-1"), T0, T0)).toEqual({ opened: true, epoch: 1 });
        // A second host with the same key and name, on this replica or another: refused, nothing written.
        for (const replica of ["r1", "r2"]) {
          expect(await store.openMinerSession(miner(replica, "inst-two-2"), T0 + 5, T0)).toEqual({
            opened: false,
            holder: { instanceId: "inst-one-1", replica: "r1", lastSeenAt: T0 },
          });
        }
        expect(await store.listConnectedMiners(T0)).toMatchObject([{ replica: "r1", epoch: 1, lastSeenAt: T0 }]);
        // The same instance reconnecting replaces its session (elsewhere too).
        expect(await store.openMinerSession(miner("r2", "inst-one-1"), T0 + 10, T0)).toEqual({ opened: true, epoch: 2 });
        // A protocol 4 miner (no instance id) replaces it as before; so does a new instance over its row.
        expect(await store.openMinerSession(miner("r1", null), T0 + 20, T0)).toEqual({ opened: true, epoch: 3 });
        expect(await store.openMinerSession(miner("r1", "inst-two-2"), T0 + 30, T0)).toEqual({ opened: true, epoch: 4 });
        // The holder's row last seen before liveSince (its replica died without closing it): taken over.
        expect((await store.openMinerSession(miner("r2", "inst-one-1"), T0 + 100, T0 + 31)).opened).toBe(true);
        // A closed session is taken over at once.
        await store.closeMinerSession("miner_a", 5, T0 + 110);
        expect(await store.openMinerSession(miner("r1", "inst-two-2"), T0 + 111, T0 + 100)).toEqual({ opened: true, epoch: 6 });
      });
    });

    describe("operators' view", () => {
      const rig = (id: string, name: string) => ({ id, keyId: "k1", name, replica: "r1", instanceId: null, gpus: [H200], models: ["gpt2"], slots: 2 });

      it("an operator's drain is kept across the miner's sessions until undrained", async () => {
        await store.openMinerSession(rig("miner_a", "rig-a"), T0, T0);
        expect(await store.setMinerDrained("miner_a", true, T0 + 1)).toBe(true);
        expect(await store.setMinerDrained("miner_nosuch", true, T0 + 1)).toBe(false);
        await store.closeMinerSession("miner_a", 1, T0 + 2);
        await store.openMinerSession(rig("miner_a", "rig-a"), T0 + 3, T0 + 3);
        expect(await store.getMiner("miner_a")).toMatchObject({ drained: true, connected: true, epoch: 2 });
        expect(await store.drainedAmong(["miner_a", "miner_b"])).toEqual(["miner_a"]);
        await store.setMinerDrained("miner_a", false, T0 + 4);
        expect(await store.drainedAmong(["miner_a"])).toEqual([]);
        expect(await store.getMiner("miner_nosuch")).toBeNull();
      });

      it("reads several miners by id at once, leaving out unknown ids", async () => {
        await store.openMinerSession(rig("miner_a", "rig-a"), T0, T0);
        await store.openMinerSession(rig("miner_b", "rig-b"), T0, T0);
        await store.openMinerSession(rig("miner_c", "rig-c"), T0, T0);
        const got = await store.getMinersById(["miner_c", "miner_nosuch", "miner_a"]);
        expect(got.map((m) => m.id).sort()).toEqual(["miner_a", "miner_c"]);
        expect(got.find((m) => m.id === "miner_c")).toMatchObject({ name: "rig-c", gpus: [H200], slots: 2 });
        expect(await store.getMinersById([])).toEqual([]);
      });

      it("counts each miner's results and failed attempts with its latest error and speed", async () => {
        await store.openMinerSession(rig("m-cpu", "rig-cpu"), T0, T0);
        const a = await create();
        const done = await claim(a.id);
        await store.commitResult(ref(done), result(done.attempt), T0 + 1);
        const b = await create({}, T0 + 2);
        const failing = await claim(b.id, T0 + 2);
        await store.failAttempt(ref(failing), { code: "oom", message: "out of memory", retryable: true }, T0 + 3, BACKOFF);
        // Handed back and cancelled attempts are neither done nor failed.
        const again = await claim(b.id, T0 + 3 + 10 * BACKOFF);
        await store.releaseLease(ref(again), T0 + 3 + 10 * BACKOFF, "draining");
        const m = await store.getMiner("m-cpu");
        expect(m).toMatchObject({ jobsDone: 1, jobsFailed: 1, tokensPerSecond: 100, lastError: { code: "oom", message: "out of memory", at: T0 + 3 } });
        expect((await store.listMiners(T0))[0]).toMatchObject({ id: "m-cpu", jobsDone: 1 });
      });

      it("lists miners connected or seen recently, connected first", async () => {
        await store.openMinerSession(rig("miner_a", "a"), T0, T0);
        await store.openMinerSession(rig("miner_b", "b"), T0, T0);
        await store.closeMinerSession("miner_a", 1, T0 + 5);
        expect((await store.listMiners(T0)).map((m) => [m.id, m.connected])).toEqual([["miner_b", true], ["miner_a", false]]);
        expect((await store.listMiners(T0 + 6)).map((m) => m.id)).toEqual(["miner_b"]);
      });

      it("lists every tenant's jobs newest first with filters and pages", async () => {
        const a = await create({ tenant: "acme", model: "gpt2" }, T0);
        const b = await create({ tenant: "other", model: "gpt2" }, T0 + 1);
        const c = await create({ tenant: "other", model: "tiny" }, T0 + 2);
        const running = await claim(a.id, T0 + 3);
        expect((await store.listAllJobs({ limit: 10 })).items.map((j) => j.id)).toEqual([c.id, b.id, a.id]);
        expect((await store.listAllJobs({ limit: 10, tenant: "other" })).items.map((j) => j.id)).toEqual([c.id, b.id]);
        expect((await store.listAllJobs({ limit: 10, model: "tiny" })).items.map((j) => j.id)).toEqual([c.id]);
        expect((await store.listAllJobs({ limit: 10, status: "assigned" })).items.map((j) => j.id)).toEqual([a.id]);
        expect((await store.listAllJobs({ limit: 10, minerId: "m-cpu" })).items.map((j) => j.id)).toEqual([a.id]);
        expect((await store.listAllJobs({ limit: 10, from: T0 + 1, to: T0 + 1 })).items.map((j) => j.id)).toEqual([b.id]);
        const p1 = await store.listAllJobs({ limit: 2 });
        expect(p1.total).toBe(3);
        const p2 = await store.listAllJobs({ limit: 2, cursor: p1.nextCursor! });
        expect([...p1.items, ...p2.items].map((j) => j.id)).toEqual([c.id, b.id, a.id]);
        expect(p2.nextCursor).toBeNull();
        expect((await store.listActiveLeases(10)).map((j) => [j.id, j.minerId])).toEqual([[a.id, running.job.minerId]]);
      });

      it("queue depth by model and priority; throughput in buckets; recent failures latest first", async () => {
        await create({ model: "gpt2", priority: "high" });
        await create({ model: "gpt2", priority: "high" });
        await create({ model: "tiny", priority: "low" });
        expect(await store.queueDepth()).toEqual([
          { model: "gpt2", priority: "high", count: 2 },
          { model: "tiny", priority: "low", count: 1 },
        ]);
        // Two completions in the first minute, one in the third.
        const ends = [T0 + 1_000, T0 + 2_000, T0 + 125_000];
        for (const at of ends) {
          const j = await create({ model: "m2" }, T0);
          const a = await claim(j.id, T0, cpuMiner("m-cpu", ["m2"]));
          await store.commitResult(ref(a), result(a.attempt), at);
        }
        expect(await store.throughput(T0, 60_000)).toEqual([
          { start: T0, jobs: 2, tokens: 22 },
          { start: T0 + 120_000, jobs: 1, tokens: 11 },
        ]);
        expect(await store.throughput(T0 + 60_000, 60_000)).toEqual([{ start: T0 + 120_000, jobs: 1, tokens: 11 }]);
        const f1 = await create({ model: "m3", maxAttempts: 1 }, T0);
        const a1 = await claim(f1.id, T0, cpuMiner("m-cpu", ["m3"]));
        await store.failAttempt(ref(a1), { code: "bad_model", message: "broken weights", retryable: false }, T0 + 10, BACKOFF);
        const f2 = await create({ model: "m3", maxAttempts: 1 }, T0);
        const a2 = await claim(f2.id, T0, cpuMiner("m-cpu", ["m3"]));
        await store.markRunning(ref(a2), T0 + 1, TTL);
        await store.timeOutRunning(T0 + 61_000 + 60_000);
        const failures = await store.recentFailures(T0, 10);
        expect(failures.map((j) => [j.id, j.status])).toEqual([[f2.id, "timed_out"], [f1.id, "failed"]]);
        expect(failures[1]!.error).toEqual({ code: "bad_model", message: "broken weights" });
        expect(await store.recentFailures(T0 + 100_000, 10)).toHaveLength(1);
      });

      it("a retry is a new job linked to the one it retries", async () => {
        const old = await create();
        const { job } = await store.createJob(newJob({ retryOf: old.id }), T0 + 1);
        expect(job.retryOf).toBe(old.id);
        expect((await store.getJobById(job.id))?.retryOf).toBe(old.id);
        expect(old.retryOf).toBeNull();
        expect((await store.listEvents(job.id, 0))[0]?.data).toMatchObject({ retry_of: old.id });
      });
    });

    describe("keys", () => {
      it("a created key authenticates only as its own kind", async () => {
        const client = await store.createKey("client", "alice", "acme", T0);
        const miner = await store.createKey("miner", "rig-1", "ops", T0 + 1);
        expect(client.record).toMatchObject({ kind: "client", name: "alice", tenant: "acme", createdAt: T0, revokedAt: null });
        expect(await store.authenticate(client.key, "client")).toEqual(client.record);
        expect(await store.authenticate(client.key, "miner")).toBeNull();
        expect(await store.authenticate(miner.key, "miner")).toEqual(miner.record);
        expect(await store.authenticate(miner.key, "client")).toBeNull();
        const operator = await store.createKey("operator", "ops", "ops", T0 + 2);
        expect(operator.key.startsWith("aitbc_ok_")).toBe(true);
        expect(await store.authenticate(operator.key, "operator")).toEqual(operator.record);
        expect(await store.authenticate(operator.key, "client")).toBeNull();
        expect(await store.authenticate(client.key, "operator")).toBeNull();
        const byId = await store.getKey(operator.record.id);
        expect(byId?.record).toEqual(operator.record);
        expect(byId?.secretHash.length).toBe(32);
        expect(await store.getKey("nosuchkey123")).toBeNull();
      });

      it("refuses a wrong secret, a garbled key and a revoked key", async () => {
        const { record, key } = await store.createKey("client", "alice", "acme", T0);
        const last = key.at(-1);
        const wrongSecret = `${key.slice(0, -1)}${last === "A" ? "B" : "A"}`;
        for (const bad of [wrongSecret, key.slice(0, -1), `${key}x`, "", "garbage", key.replace("_", "-")]) {
          expect(await store.authenticate(bad, "client")).toBeNull();
        }
        expect(await store.revokeKey(record.id, T0 + 5)).toBe(true);
        expect(await store.revokeKey(record.id, T0 + 6)).toBe(false);
        expect(await store.revokeKey("nosuchkey", T0 + 6)).toBe(false);
        expect(await store.authenticate(key, "client")).toBeNull();
        expect((await store.listKeys())[0]?.revokedAt).toBe(T0 + 5);
      });

      it("revokedAmong names exactly the revoked keys among those asked about", async () => {
        const a = await store.createKey("client", "a", "acme", T0);
        const b = await store.createKey("miner", "b", "acme", T0);
        const c = await store.createKey("client", "c", "acme", T0);
        expect(await store.revokedAmong([a.record.id, b.record.id])).toEqual([]);
        await store.revokeKey(b.record.id, T0 + 1);
        await store.revokeKey(c.record.id, T0 + 1);
        expect(await store.revokedAmong([a.record.id, b.record.id, "nosuchkey123"])).toEqual([b.record.id]);
        expect(await store.revokedAmong([])).toEqual([]);
      });

      it("listKeys never exposes secrets", async () => {
        const a = await store.createKey("client", "alice", "acme", T0);
        const b = await store.createKey("miner", "rig", "ops", T0 + 1);
        const keys = await store.listKeys();
        expect(keys).toEqual([a.record, b.record]);
        const text = JSON.stringify(keys);
        for (const k of [a.key, b.key]) {
          expect(text).not.toContain(k);
          // aitbc_ck_<12-char id>_<secret>: the secret itself may contain "_" (base64url).
          const secret = k.slice("aitbc_ck_".length + 12 + 1);
          expect(secret.length).toBeGreaterThan(16);
          expect(text).not.toContain(secret);
        }
      });
    });

    describe("files", () => {
      it("stores a file for its tenant only, sized and hashed as uploaded", async () => {
        const f = await store.createFile("acme", "line one\nline two\n", { sha256: "ff".repeat(32), bytes: 21 }, T0);
        expect(f).toMatchObject({ tenant: "acme", bytes: 21, sha256: "ff".repeat(32), createdAt: T0, content: "line one\nline two\n" });
        expect(await store.getFile("acme", f.id)).toEqual(f);
        expect(await store.getFile("globex", f.id)).toBeNull();
        expect(await store.getFile("acme", "file_nope")).toBeNull();
        const job = await create({ inputFileId: f.id, input: "" });
        expect(job.inputFileId).toBe(f.id);
      });

      it("counts each tenant's file bytes, deletes only its own files, and expires old ones", async () => {
        const a = await store.createFile("acme", "a", { sha256: "aa".repeat(32), bytes: 100 }, T0);
        const b = await store.createFile("acme", "b", { sha256: "bb".repeat(32), bytes: 50 }, T0 + 10);
        const g = await store.createFile("globex", "g", { sha256: "cc".repeat(32), bytes: 7 }, T0);
        expect(await store.usage("acme")).toEqual({ fileBytes: 150, resultBytes: 0 });
        expect(await store.deleteFile("globex", a.id)).toBe(false);
        expect(await store.deleteFile("acme", a.id)).toBe(true);
        expect(await store.deleteFile("acme", a.id)).toBe(false);
        expect(await store.getFile("acme", a.id)).toBeNull();
        expect(await store.usage("acme")).toEqual({ fileBytes: 50, resultBytes: 0 });
        expect(await store.expireFiles(T0 + 5, 100)).toBe(1); // globex's, uploaded at T0
        expect(await store.getFile("globex", g.id)).toBeNull();
        expect(await store.getFile("acme", b.id)).not.toBeNull();
        expect(await store.usage("globex")).toEqual({ fileBytes: 0, resultBytes: 0 });
      });
    });

    describe("stored results", () => {
      it("counts committed result bytes per tenant; removing a result keeps the job and frees the bytes, once", async () => {
        const j1 = await create({}, T0);
        const j2 = await create({}, T0 + 1);
        const a1 = await claim(j1.id, T0 + 2);
        const a2 = await claim(j2.id, T0 + 2);
        expect(await store.commitResult(ref(a1), { ...result(a1.attempt), bytes: 30, location: "j1/attempt-1.txt" }, T0 + 3)).toBe("committed");
        expect(await store.commitResult(ref(a2), { ...result(a2.attempt), bytes: 12, location: "j2/attempt-1.txt" }, T0 + 1_000)).toBe("committed");
        expect(await store.usage("acme")).toEqual({ fileBytes: 0, resultBytes: 42 });
        expect((await store.submitCounts("acme", "gpt2")).usage).toEqual({ fileBytes: 0, resultBytes: 42 });
        expect(await store.removeResult("globex", j1.id, "deleted", T0 + 4)).toBeNull();
        expect(await store.removeResult("acme", j1.id, "deleted", T0 + 4)).toEqual({ location: "j1/attempt-1.txt" });
        expect(await store.removeResult("acme", j1.id, "deleted", T0 + 5)).toBeNull();
        expect(await store.getJobById(j1.id)).toMatchObject({ status: "completed", result: { removed: { reason: "deleted", at: T0 + 4 } } });
        expect(await store.usage("acme")).toEqual({ fileBytes: 0, resultBytes: 12 });
        // Retention: only results completed before the cut, and only once.
        expect(await store.expireResults(T0 + 500, T0 + 2_000, 100)).toEqual([]);
        expect(await store.expireResults(T0 + 5_000, T0 + 6_000, 100)).toEqual([{ jobId: j2.id, location: "j2/attempt-1.txt" }]);
        expect(await store.expireResults(T0 + 5_000, T0 + 6_000, 100)).toEqual([]);
        expect(await store.getJobById(j2.id)).toMatchObject({ status: "completed", result: { removed: { reason: "expired", at: T0 + 6_000 } } });
        expect(await store.usage("acme")).toEqual({ fileBytes: 0, resultBytes: 0 });
        expect(await store.listEvents(j2.id, 0).then((e) => e.at(-1)?.type)).toBe("completed");
      });

      it("a job that is not completed has no result to remove", async () => {
        const job = await create();
        expect(await store.removeResult("acme", job.id, "deleted", T0 + 1)).toBeNull();
        await claim(job.id, T0 + 1);
        expect(await store.removeResult("acme", job.id, "deleted", T0 + 2)).toBeNull();
      });
    });

    describe("durability", () => {
      it("every job, event and key is unchanged after close and reopen", async () => {
        expect(h.reopen, "the harness must be able to reopen the same database").toBeDefined();
        const done = await create({}, T0 + 1);
        const running = await create({ priority: "high" }, T0 + 2);
        const queued = await create({ model: "gpt2-medium" }, T0);
        const ar = await claim(running.id, T0 + 3);
        await store.markRunning(ref(ar), T0 + 4, TTL);
        await store.requestCancel("acme", running.id, T0 + 5);
        const ad = await claim(done.id, T0 + 6);
        await store.commitResult(ref(ad), result(ad.attempt), T0 + 7);
        const { key } = await store.createKey("client", "alice", "acme", T0);

        const before = await Promise.all([queued, done, running].map((j) => store.getJobById(j.id)));
        const eventsBefore = await store.listEvents(running.id, 0);
        await store.close();
        store = await h.reopen!();
        const after = await Promise.all([queued, done, running].map((j) => store.getJobById(j.id)));
        expect(after).toEqual(before);
        expect(await store.listEvents(running.id, 0)).toEqual(eventsBefore);
        expect((await store.authenticate(key, "client"))?.name).toBe("alice");
        // The reopened store keeps working: the held lease is still honoured.
        expect(await store.renewLease(ref(ar), T0 + 8, TTL)).toEqual({ renewed: true, cancelRequested: true });
      });
    });
  });
}
