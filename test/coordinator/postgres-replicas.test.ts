import pg from "pg";
import { afterEach, beforeAll, describe, expect, it } from "vitest";
import { PostgresJobStore } from "../../src/coordinator/store/postgres/postgres-job-store.js";
import { POSTGRES_MIGRATIONS } from "../../src/coordinator/store/postgres/migrations.js";
import type { Assignment, LeaseRef } from "../../src/coordinator/store/job-store.js";
import { newJob } from "./job-store-contract.js";
import { PG_URL, freshSchema, requirePostgres } from "./pg-harness.js";

/**
 * Two store instances on one PostgreSQL database — two coordinator replicas — racing each other
 * on the verbs that must be exactly-once: claims, the reaper, a result against the reaper, an
 * Idempotency-Key, migrations. Real concurrency (separate pools, many statements in flight).
 */
beforeAll(() => requirePostgres());

const T0 = 1_700_000_000_000;
const TTL = 30_000;
const cleanups: (() => Promise<void>)[] = [];

afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function twoReplicas(): Promise<{ a: PostgresJobStore; b: PostgresJobStore; schema: string }> {
  const { schema, drop } = await freshSchema("r");
  const a = await PostgresJobStore.open({ url: PG_URL, schema, max: 6 });
  const b = await PostgresJobStore.open({ url: PG_URL, schema, max: 6 });
  cleanups.push(async () => {
    await a.close();
    await b.close();
    await drop();
  });
  return { a, b, schema };
}

const ref = (x: Assignment): LeaseRef => ({ jobId: x.job.id, attempt: x.attempt, leaseToken: x.leaseToken });

/** Every job's events are numbered 1..n with no gap or repeat. */
async function expectContiguousEvents(schema: string): Promise<void> {
  const c = new pg.Client({ connectionString: PG_URL });
  await c.connect();
  try {
    const bad = await c.query(
      `SELECT job_id FROM ${schema}.job_events GROUP BY job_id HAVING COUNT(*) <> MAX(seq) OR MIN(seq) <> 1 OR COUNT(DISTINCT seq) <> COUNT(*)`,
    );
    expect(bad.rows).toEqual([]);
  } finally {
    await c.end();
  }
}

describe("two replicas on one PostgreSQL", () => {
  it("racing claims never give one job to two miners", async () => {
    const { a, b, schema } = await twoReplicas();
    const ids: string[] = [];
    for (let i = 0; i < 120; i++) ids.push((await a.createJob(newJob(), T0 + i)).job.id);
    const claimed: string[] = [];
    const claimer = async (store: PostgresJobStore, miner: string): Promise<void> => {
      for (;;) {
        const got = await store.claimNextJob({ minerId: miner, gpus: [], models: ["gpt2"] }, T0 + 1_000, TTL);
        if (got === null) return;
        claimed.push(got.job.id);
      }
    };
    await Promise.all([0, 1, 2, 3].flatMap((i) => [claimer(a, `m-a${i}`), claimer(b, `m-b${i}`)]));
    expect(claimed.length).toBe(120);
    expect(new Set(claimed).size).toBe(120);
    expect(new Set(claimed)).toEqual(new Set(ids));
    for (const id of ids) expect((await a.getJobById(id))?.attempt).toBe(1);
    await expectContiguousEvents(schema);
  });

  it("racing multi-job claims from both replicas never give one job to two miners, and leave none behind", async () => {
    const { a, b, schema } = await twoReplicas();
    const ids: string[] = [];
    for (let i = 0; i < 120; i++) ids.push((await a.createJob(newJob(), T0 + i)).job.id);
    const claimed: string[] = [];
    const claimer = async (store: PostgresJobStore, miner: string, max: number): Promise<void> => {
      for (;;) {
        const got = await store.claimJobs({ minerId: miner, gpus: [], models: ["gpt2"] }, T0 + 1_000, TTL, max);
        // A claim racing others may find every free row locked and come back short or empty while
        // jobs remain: only an empty queue ends a claimer.
        if (got.length === 0 && (await a.countQueued({})) === 0) return;
        claimed.push(...got.map((g) => g.job.id));
      }
    };
    await Promise.all([1, 3, 8, 5].flatMap((max, i) => [claimer(a, `m-a${i}`, max), claimer(b, `m-b${i}`, max)]));
    expect(claimed.length).toBe(120);
    expect(new Set(claimed)).toEqual(new Set(ids));
    for (const id of ids) expect(await a.getJobById(id)).toMatchObject({ status: "assigned", attempt: 1 });
    await expectContiguousEvents(schema);
  });

  it("two miner processes with one key and name saying hello to two replicas at once: exactly one session opens, the other learns who holds it", async () => {
    const { a, b } = await twoReplicas();
    const miner = (replica: string, instanceId: string) => ({ id: "miner_dup", keyId: "k1", name: "rig", replica, instanceId, gpus: [], models: ["gpt2"], slots: 1 });
    for (let round = 0; round < 20; round++) {
      const now = T0 + round * 1_000;
      // Each round starts from a closed session (the previous winner disconnected).
      const results = await Promise.all([a.openMinerSession(miner("ra", `inst-a-${round}`), now, now - 30_000), b.openMinerSession(miner("rb", `inst-b-${round}`), now, now - 30_000)]);
      const won = results.filter((r) => r.opened);
      const lost = results.filter((r) => !r.opened);
      expect(won).toHaveLength(1);
      expect(lost).toHaveLength(1);
      const winner = results[0].opened ? `inst-a-${round}` : `inst-b-${round}`;
      expect(lost[0]).toMatchObject({ opened: false, holder: { instanceId: winner, replica: winner.startsWith("inst-a") ? "ra" : "rb", lastSeenAt: now } });
      const epoch = (won[0] as { epoch: number }).epoch;
      expect(epoch).toBe(round + 1);
      await a.closeMinerSession("miner_dup", epoch, now + 500);
    }
  });

  it("concurrent reapers requeue each expired lease exactly once", async () => {
    const { a, b, schema } = await twoReplicas();
    const ids: string[] = [];
    for (let i = 0; i < 60; i++) {
      const { job } = await a.createJob(newJob(), T0);
      ids.push(job.id);
      await a.claimNextJob({ minerId: "m", gpus: [], models: ["gpt2"] }, T0, TTL);
    }
    const later = T0 + TTL + 1;
    const reaped = (await Promise.all([a, b, a, b].map((s) => s.reapExpiredLeases(later, 1_000)))).flat();
    const again = (await Promise.all([a, b].map((s) => s.reapExpiredLeases(later, 1_000)))).flat();
    expect(reaped.length + again.length).toBe(60);
    expect(new Set([...reaped, ...again].map((r) => r.jobId)).size).toBe(60);
    for (const id of ids) {
      expect(await a.getJobById(id)).toMatchObject({ status: "queued", failures: 1 });
      expect((await a.listEvents(id, 0)).filter((e) => e.type === "requeued")).toHaveLength(1);
    }
    await expectContiguousEvents(schema);
  });

  it("a result racing the reaper: exactly one of them wins, every time", async () => {
    const { a, b, schema } = await twoReplicas();
    const tally = { committed: 0, reaped: 0 };
    for (let i = 0; i < 30; i++) {
      const { job } = await a.createJob(newJob(), T0);
      const lease = (await a.claimNextJob({ minerId: "m", gpus: [], models: ["gpt2"] }, T0, TTL))!;
      await a.markRunning(ref(lease), T0 + 1, TTL);
      const late = T0 + TTL + 10;
      const result = { sha256: "ab".repeat(32), bytes: 3, location: `${job.id}/attempt-1.txt`, finishReason: "length", usage: { prompt_tokens: 1, completion_tokens: 1 }, tokensPerSecond: 1, attempt: 1 };
      const [outcome, reaped] = await Promise.all([a.commitResult({ ...ref(lease), minerId: "m" }, result, late), b.reapExpiredLeases(late, 1_000)]);
      const after = (await a.getJobById(job.id))!;
      if (outcome === "committed") {
        tally.committed++;
        expect(reaped.map((r) => r.jobId)).not.toContain(job.id);
        expect(after.status).toBe("completed");
      } else {
        tally.reaped++;
        expect(outcome).toBe("stale");
        expect(reaped.map((r) => r.jobId)).toContain(job.id);
        expect(after).toMatchObject({ status: "queued", result: null });
      }
      const types = (await a.listEvents(job.id, 0)).map((e) => e.type);
      expect(types.filter((t) => t === "completed" || t === "requeued")).toHaveLength(1);
    }
    expect(tally.committed + tally.reaped).toBe(30);
    console.log(`result racing the reaper on two replicas (30 jobs): ${JSON.stringify(tally)}`);
    await expectContiguousEvents(schema);
  });

  it("one Idempotency-Key through two replicas at once makes one job, and no error", async () => {
    const { a, b } = await twoReplicas();
    for (let i = 0; i < 20; i++) {
      const job = newJob({ idempotency: { key: `k-${i}`, requestHash: `h-${i}` } });
      const [x, y] = await Promise.all([a.createJob(job, T0 + i), b.createJob(job, T0 + i)]);
      expect(x.job.id).toBe(y.job.id);
      expect([x.created, y.created].sort()).toEqual([false, true]);
    }
    const page = await a.listJobs("acme", { limit: 100 });
    expect(page.total).toBe(20);
  });

  it("pending S3 uploads re-driven by two replicas at once: each job claimed by one of them, until its claim runs out", async () => {
    const { a, b } = await twoReplicas();
    for (let i = 0; i < 20; i++) {
      const { job } = await a.createJob(newJob({ destination: "s3://bucket/p" }), T0);
      const lease = (await a.claimNextJob({ minerId: "m", gpus: [], models: ["gpt2"] }, T0, TTL))!;
      const result = { sha256: "ab".repeat(32), bytes: 3, location: `results/${job.id}/attempt-1-x.txt`, finishReason: "length", usage: { prompt_tokens: 1, completion_tokens: 1 }, tokensPerSecond: 1, attempt: 1 };
      expect(await a.commitResult(ref(lease), result, T0 + 1)).toBe("committed");
    }
    const [x, y] = await Promise.all([a.claimPendingUploads(T0 + 2, 60_000, 15), b.claimPendingUploads(T0 + 2, 60_000, 15)]);
    const ids = [...x, ...y].map((j) => j.id);
    expect(ids).toHaveLength(20);
    expect(new Set(ids).size).toBe(20);
    expect(await a.claimPendingUploads(T0 + 3, 60_000, 50)).toEqual([]);
    expect(await b.claimPendingUploads(T0 + 2 + 60_001, 60_000, 50)).toHaveLength(20);
  });

  it("replicas that start together migrate once, under the advisory lock", async () => {
    const { schema, drop } = await freshSchema("m");
    cleanups.push(drop);
    const stores = await Promise.all([0, 1, 2].map(() => PostgresJobStore.open({ url: PG_URL, schema, max: 2 })));
    for (const s of stores) cleanups.push(() => s.close());
    const c = new pg.Client({ connectionString: PG_URL });
    await c.connect();
    try {
      const rows = (await c.query<{ version: number }>(`SELECT version FROM ${schema}.schema_migrations ORDER BY version`)).rows;
      expect(rows.map((r) => r.version)).toEqual(POSTGRES_MIGRATIONS.map((_, i) => i + 1));
    } finally {
      await c.end();
    }
    expect((await stores[1]!.createJob(newJob(), T0)).created).toBe(true);
  });

  it("a database whose schema is newer than the code is refused at start, naming both versions", async () => {
    const { a, schema } = await twoReplicas();
    await a.db.query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)", [POSTGRES_MIGRATIONS.length + 5, Date.now()]);
    await expect(PostgresJobStore.open({ url: PG_URL, schema })).rejects.toThrow(
      new RegExp(`schema is at version ${POSTGRES_MIGRATIONS.length + 5}, newer than this coordinator's ${POSTGRES_MIGRATIONS.length}`),
    );
  });
});
