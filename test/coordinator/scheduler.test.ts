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
 * The scheduler against a real SQLite store and sessions over fake sockets: what it does with a
 * session whose socket can no longer send.
 */
describe("scheduler", () => {
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
  function session(name: string, link: { open: boolean; sends: boolean }): MinerSession {
    const fake = { open: link.open, send: () => link.sends, close: () => undefined } as unknown as MinerLink;
    return new MinerSession(
      { minerId: `miner_${name}`, keyId: "k", name, gpus: [], models: ["gpt2"], slots: 1, protocolVersion: 2, epoch: 1 },
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
  async function dispatchTo(s: MinerSession): Promise<number> {
    // Each claim is counted; past 20 the store finds nothing, so a dispatcher that keeps
    // offering the job ends here instead of spinning (and hanging this test's process).
    let claims = 0;
    const claim = store.claimNextJob.bind(store);
    store.claimNextJob = (miner: MinerCapabilities, now: number, ttl: number): Promise<Assignment | null> =>
      ++claims > 20 ? Promise.resolve(null) : claim(miner, now, ttl);
    const scheduler = new Scheduler(ctx, { targets: () => [s], target: (id) => (id === s.minerId ? s : undefined) });
    scheduler.start();
    try {
      scheduler.dispatch();
      // A timer's turn comes only once the dispatcher stops running in microtasks.
      await new Promise((resolve) => setTimeout(resolve, 0));
    } finally {
      await scheduler.stop();
    }
    return claims;
  }

  it("a session whose socket is closing is offered no job: the dispatcher gets back to the event loop", async () => {
    const id = await queuedJob();
    // The peer hung up (or we closed and wait for its answer): until the socket's "close"
    // event the session is still listed, with the credits of its last pull.
    const closing = session("closing", { open: false, sends: false });
    closing.setCredits(1);
    expect(await dispatchTo(closing)).toBe(0);
    expect((await store.getJobById(id))?.status).toBe("queued");
  });

  it("a session whose send fails is offered the job once, then none (the chaos-run livelock)", async () => {
    const id = await queuedJob();
    const failing = session("failing", { open: true, sends: false });
    failing.setCredits(1);
    expect(await dispatchTo(failing)).toBe(1);
    expect(failing.credits).toBe(0);
    const after = await store.getJobById(id);
    expect(after?.status).toBe("queued");
    expect(after?.attempt).toBe(1);
  });
});
