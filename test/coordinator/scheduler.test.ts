import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { type CoordinatorContext } from "../../src/coordinator/context.js";
import { MinerSession } from "../../src/coordinator/gateway/miner-session.js";
import { SqliteJobStore } from "../../src/coordinator/store/sqlite/sqlite-job-store.js";
import { dispatchTo, fakeSession, queuedJob, schedulerContext } from "./scheduler-harness.js";

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

  const session = fakeSession;
  const queued = (): Promise<string> => queuedJob(store);
  const dispatchOne = (s: MinerSession): Promise<number> => dispatchTo(ctx, store, [s]);

  it("a session whose socket is closing is offered no job: the dispatcher gets back to the event loop", async () => {
    const id = await queued();
    // The peer hung up (or we closed and wait for its answer): until the socket's "close"
    // event the session is still listed, with the credits of its last pull.
    const closing = session("closing", { open: false, sends: false });
    closing.setCredits(1);
    expect(await dispatchOne(closing)).toBe(0);
    expect((await store.getJobById(id))?.status).toBe("queued");
  });

  it("a session whose send fails is offered the job once, then none (the chaos-run livelock)", async () => {
    const id = await queued();
    const failing = session("failing", { open: true, sends: false });
    failing.setCredits(1);
    expect(await dispatchOne(failing)).toBe(1);
    expect(failing.credits).toBe(0);
    const after = await store.getJobById(id);
    expect(after?.status).toBe("queued");
    expect(after?.attempt).toBe(1);
  });
});
