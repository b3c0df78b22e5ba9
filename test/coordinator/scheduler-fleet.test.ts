import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { type CoordinatorContext } from "../../src/coordinator/context.js";
import { MinerSession } from "../../src/coordinator/gateway/miner-session.js";
import { Scheduler } from "../../src/coordinator/scheduler/scheduler.js";
import { SqliteJobStore } from "../../src/coordinator/store/sqlite/sqlite-job-store.js";
import { waitFor } from "../e2e/cluster.js";
import { countClaims, dispatchTo, fakeSession, queuedJob, schedulerContext } from "./scheduler-harness.js";

/**
 * The scheduler against a real SQLite store and sessions over fake sockets: what a dispatch run
 * costs the store when a whole fleet of idle sessions wants work (bench/fleet.ts's finding).
 */
describe("scheduler with a fleet", () => {
  let store: SqliteJobStore;
  let ctx: CoordinatorContext;
  let close: () => Promise<void>;

  beforeEach(() => {
    ({ store, ctx, close } = schedulerContext());
  });

  afterEach(async () => {
    await close();
  });

  const session = fakeSession;
  const queued = (): Promise<string> => queuedJob(store);
  const dispatchAll = (sessions: MinerSession[]): Promise<number> => dispatchTo(ctx, store, sessions, 50);

  it("one job and 200 idle sessions of one capability: two claims, not 200", async () => {
    const id = await queued();
    const fleet = Array.from({ length: 200 }, (_, i) => session(`m${i}`, { open: true, sends: true }));
    for (const s of fleet) s.setCredits(1);
    expect(await dispatchAll(fleet)).toBe(2);
    expect((await store.getJobById(id))?.status).toBe("assigned");
    expect(fleet.filter((s) => s.credits === 0)).toHaveLength(1);
  });

  it("sessions of another capability still get their claim in the same run", async () => {
    await queued();
    const other = session("other", { open: true, sends: true }, ["tiny-gpt2"]);
    const fleet = [...Array.from({ length: 50 }, (_, i) => session(`m${i}`, { open: true, sends: true })), other];
    for (const s of fleet) s.setCredits(1);
    // gpt2: one claim that takes the job, one that finds nothing; tiny-gpt2: one that finds nothing.
    expect(await dispatchAll(fleet)).toBe(3);
  });

  it("successive runs start after the session served last", async () => {
    const fleet = Array.from({ length: 4 }, (_, i) => session(`m${i}`, { open: true, sends: true }));
    const scheduler = new Scheduler(ctx, { targets: () => fleet, target: (id) => fleet.find((s) => s.minerId === id) });
    scheduler.start();
    try {
      const served: string[] = [];
      for (let round = 0; round < 4; round++) {
        for (const s of fleet) s.setCredits(1);
        const before = fleet.map((s) => s.leases.size);
        await queued();
        scheduler.dispatch();
        await new Promise((resolve) => setTimeout(resolve, 50));
        served.push(...fleet.filter((s, i) => s.leases.size > before[i]!).map((s) => s.name));
      }
      expect(served).toEqual(["m0", "m1", "m2", "m3"]);
    } finally {
      await scheduler.stop();
    }
  });
  it("a deep queue is claimed several at a time (at most 4 in flight), each job by one session, one job per session", async () => {
    const ids = new Set<string>();
    for (let i = 0; i < 30; i++) ids.add(await queued());
    const fleet = Array.from({ length: 40 }, (_, i) => session(`m${i}`, { open: true, sends: true }));
    for (const s of fleet) s.setCredits(1);
    let inFlight = 0;
    let most = 0;
    const claim = store.claimJobs.bind(store);
    store.claimJobs = async (miner, now, ttl, max) => {
      most = Math.max(most, ++inFlight);
      // A store round trip: the next claim starts before this one answers only if the scheduler sent it.
      await new Promise((resolve) => setImmediate(resolve));
      try {
        return await claim(miner, now, ttl, max);
      } finally {
        inFlight -= 1;
      }
    };
    const scheduler = new Scheduler(ctx, { targets: () => fleet, target: (id) => fleet.find((s) => s.minerId === id) });
    scheduler.start();
    try {
      scheduler.dispatch();
      for (let i = 0; i < 200 && fleet.filter((s) => s.leases.size > 0).length < 30; i++) await new Promise((resolve) => setTimeout(resolve, 10));
    } finally {
      await scheduler.stop();
      store.claimJobs = claim;
    }
    expect(most).toBe(4);
    const held = fleet.flatMap((s) => [...s.leases.values()].map((l) => l.jobId));
    expect(held).toHaveLength(30);
    expect(new Set(held)).toEqual(ids);
    expect(fleet.every((s) => s.leases.size <= 1)).toBe(true);
    for (const id of ids) expect((await store.getJobById(id))?.status).toBe("assigned");
  });

  it("sessions with free slots take a deep queue several jobs a claim, asking for more each round, never past their credits", async () => {
    const ids = new Set<string>();
    for (let i = 0; i < 30; i++) ids.add(await queued());
    const fleet = Array.from({ length: 4 }, (_, i) => session(`m${i}`, { open: true, sends: true }, ["gpt2"], 8));
    for (const s of fleet) s.setCredits(8);
    const asked: number[] = [];
    const claim = store.claimJobs.bind(store);
    store.claimJobs = (miner, now, ttl, max) => {
      asked.push(max);
      return claim(miner, now, ttl, max);
    };
    try {
      await dispatchAll(fleet);
    } finally {
      store.claimJobs = claim;
    }
    const held = fleet.flatMap((s) => [...s.leases.values()].map((l) => l.jobId));
    // 32 free slots, 30 jobs: every job handed out once, no session past its 8.
    expect(new Set(held)).toEqual(ids);
    expect(held).toHaveLength(30);
    expect(fleet.every((s) => s.leases.size <= 8)).toBe(true);
    // One job a claim first (a short queue is spread), then 2 and 4 as each round fills (28 jobs in
    // 12 claims), then what the credits leave: far fewer claims than jobs.
    expect(asked.slice(0, 12)).toEqual([1, 1, 1, 1, 2, 2, 2, 2, 4, 4, 4, 4]);
    expect(asked.length).toBeLessThan(20);
  });

  it("jobs queued since the last run make a run start wide: one batch of claims for all of them", async () => {
    const fleet = Array.from({ length: 4 }, (_, i) => session(`m${i}`, { open: true, sends: true }, ["gpt2"], 8));
    const asked: number[] = [];
    const claim = store.claimJobs.bind(store);
    store.claimJobs = (miner, now, ttl, max) => {
      asked.push(max);
      return claim(miner, now, ttl, max);
    };
    const scheduler = new Scheduler(ctx, { targets: () => fleet, target: (id) => fleet.find((s) => s.minerId === id) });
    scheduler.start();
    try {
      // No session wants work while 20 jobs are queued: the runs their events start claim nothing.
      for (let i = 0; i < 20; i++) await queued();
      await new Promise((resolve) => setTimeout(resolve, 10));
      expect(asked).toEqual([]);
      // Then the miners pull: the run knows of 20 jobs and asks for them in one batch.
      for (const s of fleet) s.setCredits(8);
      scheduler.dispatch();
      for (let i = 0; i < 200 && fleet.reduce((n, s) => n + s.leases.size, 0) < 20; i++) await new Promise((resolve) => setTimeout(resolve, 10));
    } finally {
      await scheduler.stop();
      store.claimJobs = claim;
    }
    expect(fleet.reduce((n, s) => n + s.leases.size, 0)).toBe(20);
    expect(asked.slice(0, 4)).toEqual([5, 5, 5, 5]);
    // All 20 in that first batch; then one more batch, which finds the queue empty.
    expect(fleet.every((s) => s.leases.size === 5)).toBe(true);
    expect(asked.length).toBeLessThanOrEqual(8);
  });

  it("skip claiming until a job is queued: a pull after an empty claim costs the store nothing", async () => {
    const claims = countClaims(store);
    const fleet = Array.from({ length: 20 }, (_, i) => fakeSession(`m${i}`, { open: true, sends: true }));
    for (const s of fleet) s.setCredits(1);
    // No reaper tick during the test: each one forgets what was found empty (the cover for a lost hint).
    const quiet = { ...ctx, config: { ...ctx.config, scheduler: { ...ctx.config.scheduler, reapIntervalMs: 3_600_000 } } };
    const scheduler = new Scheduler(quiet, { targets: () => fleet, target: (id) => fleet.find((s) => s.minerId === id) });
    scheduler.start();
    const settle = (): Promise<void> => new Promise((resolve) => setTimeout(resolve, 20));
    try {
      scheduler.dispatch();
      await settle();
      // Nothing queued: one claim for the capability, which finds nothing.
      expect(claims.count).toBe(1);
      // Pulls (dispatch runs) with nothing queued since: no claim at all.
      scheduler.dispatch();
      scheduler.dispatch();
      await settle();
      expect(claims.count).toBe(1);
      // A job is queued (its event reaches the scheduler): claimed at once, without waiting for a tick.
      const id = await queuedJob(store);
      await waitFor("the job assigned", () => store.getJobById(id), (j) => j?.status === "assigned");
      await settle();
      expect(claims.count).toBeGreaterThan(1);
      const afterJob = claims.count;
      scheduler.dispatch();
      await settle();
      // The run after the job found the queue empty again, so this one claims nothing.
      expect(claims.count).toBe(afterJob);
    } finally {
      await scheduler.stop();
      claims.restore();
    }
  });
});
