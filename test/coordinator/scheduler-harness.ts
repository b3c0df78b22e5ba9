import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { silentLogger } from "../../src/common/logger.js";
import type { MinerLink } from "../../src/coordinator/gateway/miner-link.js";
import { MinerSession } from "../../src/coordinator/gateway/miner-session.js";
import { ChunkBuffer, ResultBufferPool } from "../../src/coordinator/gateway/result-chunks.js";
import { Scheduler } from "../../src/coordinator/scheduler/scheduler.js";
import type { Assignment, MinerCapabilities } from "../../src/coordinator/store/job-store.js";
import { MemoryRateLimiter } from "../../src/coordinator/auth/rate-limiter.js";
import { loadCoordinatorConfig } from "../../src/coordinator/config.js";
import { NO_MINERS, NO_REPLICAS, type CoordinatorContext } from "../../src/coordinator/context.js";
import { StreamRegistry } from "../../src/coordinator/http/stream-registry.js";
import { CoordinatorMetrics } from "../../src/coordinator/metrics.js";
import { ObservedSpeeds } from "../../src/coordinator/observed-speeds.js";
import { LocalResultStore } from "../../src/coordinator/results/result-store.js";
import { JobEvents } from "../../src/coordinator/store/job-events.js";
import { SqliteJobStore } from "../../src/coordinator/store/sqlite/sqlite-job-store.js";
import { newJob } from "./job-store-contract.js";

/** A coordinator context over a real SQLite store in a temp dir, for the scheduler's tests; `close` removes it. */
export function schedulerContext(): { store: SqliteJobStore; ctx: CoordinatorContext; close: () => Promise<void> } {
  const dir = mkdtempSync(path.join(tmpdir(), "aitbc-scheduler-"));
  const events = new JobEvents();
  const store = new SqliteJobStore(path.join(dir, "coordinator.db"), events);
  const ctx: CoordinatorContext = {
    config: loadCoordinatorConfig(undefined, { optional: true, env: {}, overrides: { "storage.data_dir": dir, "log.level": "silent" } }),
    store,
    results: new LocalResultStore(path.join(dir, "results")),
    events,
    miners: NO_MINERS,
    advertisedModels: new Set(),
    speeds: new ObservedSpeeds(),
    limiter: new MemoryRateLimiter([]),
    adminLimiter: new MemoryRateLimiter([]),
    fleetControl: NO_REPLICAS,
    streams: new StreamRegistry(10),
    metrics: new CoordinatorMetrics(),
    log: silentLogger(),
    now: Date.now,
    replica: "test",
  };
  return {
    store,
    ctx,
    close: async () => {
      await store.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * A session over a stand-in link: `open` is what the link says of its socket, `sends` whether
 * a frame handed to it goes out (a real link refuses exactly when it is not open).
 */
export function fakeSession(name: string, link: { open: boolean; sends: boolean }, models = ["gpt2"], slots = 1): MinerSession {
  const fake = { open: link.open, send: () => link.sends, close: () => undefined } as unknown as MinerLink;
  return new MinerSession(
    { minerId: `miner_${name}`, keyId: "k", name, gpus: [], models, slots, protocolVersion: 2, epoch: 1 },
    fake,
    new ChunkBuffer(new ResultBufferPool(1024), 1024),
    silentLogger(),
  );
}

export async function queuedJob(store: SqliteJobStore): Promise<string> {
  const { job } = await store.createJob(newJob(), Date.now());
  return job.id;
}

/**
 * Runs one dispatch for these sessions, then waits `settleMs` (0: one timer turn, which comes
 * only once the dispatcher stops running in microtasks); returns how many claims the store saw.
 */
export async function dispatchTo(ctx: CoordinatorContext, store: SqliteJobStore, sessions: MinerSession[], settleMs = 0): Promise<number> {
  const claims = countClaims(store);
  const scheduler = new Scheduler(ctx, { targets: () => sessions, target: (id) => sessions.find((s) => s.minerId === id) });
  scheduler.start();
  try {
    scheduler.dispatch();
    await new Promise((resolve) => setTimeout(resolve, settleMs));
  } finally {
    await scheduler.stop();
    claims.restore();
  }
  return claims.count;
}

/**
 * Counts the store's claims until `restore`. Past 20 the store finds nothing, so a dispatcher
 * that keeps offering a job ends there instead of spinning (and hanging the test's process).
 */
export function countClaims(store: SqliteJobStore): { readonly count: number; restore(): void } {
  let count = 0;
  const claim = store.claimJobs.bind(store);
  store.claimJobs = (miner: MinerCapabilities, now: number, ttl: number, max: number): Promise<Assignment[]> =>
    ++count > 20 ? Promise.resolve([]) : claim(miner, now, ttl, max);
  return {
    get count() {
      return count;
    },
    restore: () => {
      store.claimJobs = claim;
    },
  };
}
