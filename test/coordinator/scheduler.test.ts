import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { WebSocket } from "ws";
import { silentLogger } from "../../src/common/logger.js";
import { RateLimiter } from "../../src/coordinator/auth/rate-limiter.js";
import { loadCoordinatorConfig } from "../../src/coordinator/config.js";
import { NO_MINERS, type CoordinatorContext } from "../../src/coordinator/context.js";
import { MinerSession } from "../../src/coordinator/gateway/miner-session.js";
import { CoordinatorMetrics } from "../../src/coordinator/metrics.js";
import { LocalResultStore } from "../../src/coordinator/results/result-store.js";
import { Scheduler } from "../../src/coordinator/scheduler/scheduler.js";
import { JobEvents } from "../../src/coordinator/store/job-events.js";
import type { Assignment, MinerCapabilities } from "../../src/coordinator/store/job-store.js";
import { SqliteJobStore } from "../../src/coordinator/store/sqlite-job-store.js";
import { resolveGenerationParameters } from "../../src/protocol/generation.js";

/**
 * The scheduler against a real SQLite store and sessions over fake sockets: what it does with a
 * session whose socket can no longer send.
 */
describe("scheduler", () => {
  let dir: string;
  let store: SqliteJobStore;
  let ctx: CoordinatorContext;

  beforeEach(() => {
    dir = mkdtempSync(path.join(tmpdir(), "aitbc-scheduler-"));
    const events = new JobEvents();
    store = new SqliteJobStore(path.join(dir, "coordinator.db"), events);
    ctx = {
      config: loadCoordinatorConfig(undefined, { optional: true, env: {}, overrides: { "storage.data_dir": dir, "log.level": "silent" } }),
      store,
      results: new LocalResultStore(path.join(dir, "results")),
      events,
      miners: NO_MINERS,
      limiter: new RateLimiter([]),
      metrics: new CoordinatorMetrics(),
      log: silentLogger(),
      now: Date.now,
    };
  });

  afterEach(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });

  /** A session whose socket is in `readyState` (ws numbering: 1 open, 2 closing). */
  function session(name: string, readyState: number): MinerSession {
    const socket = { readyState, OPEN: 1, send: () => undefined, close: () => undefined } as unknown as WebSocket;
    return new MinerSession(`miner_${name}`, name, [], ["gpt2"], 1, socket, silentLogger());
  }

  it("a session whose socket is closing is offered a job once, then none: the dispatcher gets back to the event loop", async () => {
    const { job } = await store.createJob(
      {
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
        estimatedCost: 0,
        estimatedTimeSeconds: 1,
      },
      Date.now(),
    );
    // The peer hung up (or we closed and wait for its answer): until the socket's "close"
    // event the session is still listed, with the credits of its last pull.
    const closing = session("closing", 2);
    closing.credits = 1;
    // Each claim is counted; past 20 the store finds nothing, so a dispatcher that keeps
    // offering the job ends here instead of spinning (and hanging this test's process).
    let claims = 0;
    const claim = store.claimNextJob.bind(store);
    store.claimNextJob = (miner: MinerCapabilities, now: number, ttl: number): Promise<Assignment | null> =>
      ++claims > 20 ? Promise.resolve(null) : claim(miner, now, ttl);

    const scheduler = new Scheduler(ctx, () => [closing], (id) => (id === closing.minerId ? closing : undefined));
    scheduler.start();
    try {
      scheduler.dispatch();
      // A timer's turn comes only once the dispatcher stops running in microtasks.
      await new Promise((resolve) => setTimeout(resolve, 0));
    } finally {
      await scheduler.stop();
    }

    expect(claims).toBe(1);
    expect(closing.credits).toBe(0);
    const after = await store.getJobById(job.id);
    expect(after?.status).toBe("queued");
    expect(after?.attempt).toBe(1);
  });
});
