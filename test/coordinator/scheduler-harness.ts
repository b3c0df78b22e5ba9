import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { silentLogger } from "../../src/common/logger.js";
import { MemoryRateLimiter } from "../../src/coordinator/auth/rate-limiter.js";
import { loadCoordinatorConfig } from "../../src/coordinator/config.js";
import { NO_MINERS, type CoordinatorContext } from "../../src/coordinator/context.js";
import { StreamRegistry } from "../../src/coordinator/http/stream-registry.js";
import { CoordinatorMetrics } from "../../src/coordinator/metrics.js";
import { LocalResultStore } from "../../src/coordinator/results/result-store.js";
import { JobEvents } from "../../src/coordinator/store/job-events.js";
import { SqliteJobStore } from "../../src/coordinator/store/sqlite/sqlite-job-store.js";

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
    limiter: new MemoryRateLimiter([]),
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
