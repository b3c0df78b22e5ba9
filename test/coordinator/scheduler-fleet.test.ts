import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { type CoordinatorContext } from "../../src/coordinator/context.js";
import { MinerSession } from "../../src/coordinator/gateway/miner-session.js";
import { Scheduler } from "../../src/coordinator/scheduler/scheduler.js";
import { SqliteJobStore } from "../../src/coordinator/store/sqlite/sqlite-job-store.js";
import { dispatchTo, fakeSession, queuedJob, schedulerContext } from "./scheduler-harness.js";

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
    const claim = store.claimNextJob.bind(store);
    store.claimNextJob = async (miner, now, ttl) => {
      most = Math.max(most, ++inFlight);
      // A store round trip: the next claim starts before this one answers only if the scheduler sent it.
      await new Promise((resolve) => setImmediate(resolve));
      try {
        return await claim(miner, now, ttl);
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
      store.claimNextJob = claim;
    }
    expect(most).toBe(4);
    const held = fleet.flatMap((s) => [...s.leases.values()].map((l) => l.jobId));
    expect(held).toHaveLength(30);
    expect(new Set(held)).toEqual(ids);
    expect(fleet.every((s) => s.leases.size <= 1)).toBe(true);
    for (const id of ids) expect((await store.getJobById(id))?.status).toBe("assigned");
  });
});
