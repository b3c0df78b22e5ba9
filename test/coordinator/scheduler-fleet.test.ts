import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { silentLogger } from "../../src/common/logger.js";
import { type CoordinatorContext } from "../../src/coordinator/context.js";
import type { MinerLink } from "../../src/coordinator/gateway/miner-link.js";
import { MinerSession } from "../../src/coordinator/gateway/miner-session.js";
import { ChunkBuffer, ResultBufferPool } from "../../src/coordinator/gateway/result-chunks.js";
import { Scheduler } from "../../src/coordinator/scheduler/scheduler.js";
import type { Assignment, MinerCapabilities } from "../../src/coordinator/store/job-store.js";
import { SqliteJobStore } from "../../src/coordinator/store/sqlite/sqlite-job-store.js";
import { schedulerContext } from "./scheduler-harness.js";
import { newJob } from "./job-store-contract.js";

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

  /**
   * A session over a stand-in link: `open` is what the link says of its socket, `sends` whether
   * a frame handed to it goes out (a real link refuses exactly when it is not open).
   */
  function session(name: string, link: { open: boolean; sends: boolean }, models = ["gpt2"]): MinerSession {
    const fake = { open: link.open, send: () => link.sends, close: () => undefined } as unknown as MinerLink;
    return new MinerSession(
      { minerId: `miner_${name}`, keyId: "k", name, gpus: [], models, slots: 1, protocolVersion: 2, epoch: 1 },
      fake,
      new ChunkBuffer(new ResultBufferPool(1024), 1024),
      silentLogger(),
    );
  }

  async function queuedJob(): Promise<string> {
    const { job } = await store.createJob(newJob(), Date.now());
    return job.id;
  }

  /** Runs one dispatch for these sessions; returns how many claims the store saw. */
  async function dispatchTo(sessions: MinerSession[]): Promise<number> {
    // Each claim is counted; past 20 the store finds nothing, so a dispatcher that keeps
    // offering the job ends here instead of spinning (and hanging this test's process).
    let claims = 0;
    const claim = store.claimNextJob.bind(store);
    store.claimNextJob = (miner: MinerCapabilities, now: number, ttl: number): Promise<Assignment | null> =>
      ++claims > 20 ? Promise.resolve(null) : claim(miner, now, ttl);
    const scheduler = new Scheduler(ctx, { targets: () => sessions, target: (id) => sessions.find((s) => s.minerId === id) });
    scheduler.start();
    try {
      scheduler.dispatch();
      await new Promise((resolve) => setTimeout(resolve, 50));
    } finally {
      await scheduler.stop();
    }
    return claims;
  }

  it("one job and 200 idle sessions of one capability: two claims, not 200", async () => {
    const id = await queuedJob();
    const fleet = Array.from({ length: 200 }, (_, i) => session(`m${i}`, { open: true, sends: true }));
    for (const s of fleet) s.setCredits(1);
    expect(await dispatchTo(fleet)).toBe(2);
    expect((await store.getJobById(id))?.status).toBe("assigned");
    expect(fleet.filter((s) => s.credits === 0)).toHaveLength(1);
  });

  it("sessions of another capability still get their claim in the same run", async () => {
    await queuedJob();
    const other = session("other", { open: true, sends: true }, ["tiny-gpt2"]);
    const fleet = [...Array.from({ length: 50 }, (_, i) => session(`m${i}`, { open: true, sends: true })), other];
    for (const s of fleet) s.setCredits(1);
    // gpt2: one claim that takes the job, one that finds nothing; tiny-gpt2: one that finds nothing.
    expect(await dispatchTo(fleet)).toBe(3);
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
        await queuedJob();
        scheduler.dispatch();
        await new Promise((resolve) => setTimeout(resolve, 50));
        served.push(...fleet.filter((s, i) => s.leases.size > before[i]!).map((s) => s.name));
      }
      expect(served).toEqual(["m0", "m1", "m2", "m3"]);
    } finally {
      await scheduler.stop();
    }
  });
});
