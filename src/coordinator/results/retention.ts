import { errorMessage } from "../../common/errors.js";
import type { Logger } from "../../common/logger.js";
import type { JobStore } from "../store/job-store.js";
import type { ResultStore } from "./result-store.js";

const BATCH = 500;

/**
 * `[results] retention`: every `sweepMs` (and once at start) stored outputs of jobs completed
 * longer ago than the retention, and uploaded files older than it, are deleted. The job record
 * stays and says its result expired (the download answers 410). Each batch is marked in the store
 * first, then the files are removed: a crash in between leaves files that the start-up sweep
 * removes, never a record pointing at nothing it says is there. A retention of 0 keeps everything.
 */
export class RetentionSweeper {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> = Promise.resolve();

  constructor(
    private readonly deps: { store: JobStore; results: ResultStore; retentionMs: number; sweepMs: number; log: Logger; now: () => number },
  ) {}

  start(): void {
    if (this.deps.retentionMs <= 0) return;
    const run = (): void => {
      this.running = this.sweep()
        .then((n) => {
          if (n.results > 0 || n.files > 0) this.deps.log.info(n, "retention: expired results and files deleted");
        })
        .catch((err: unknown) => this.deps.log.warn({ err: errorMessage(err) }, "retention sweep failed"));
    };
    run();
    this.timer = setInterval(run, Math.max(1_000, this.deps.sweepMs));
    this.timer.unref();
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    await this.running;
  }

  /** One pass; returns what it deleted. */
  async sweep(): Promise<{ results: number; files: number }> {
    const { store, results, retentionMs, now } = this.deps;
    const before = now() - retentionMs;
    let expired = 0;
    for (;;) {
      const batch = await store.expireResults(before, now(), BATCH);
      for (const r of batch) await results.remove(r.location);
      expired += batch.length;
      if (batch.length < BATCH) break;
    }
    let files = 0;
    for (;;) {
      const n = await store.expireFiles(before, BATCH);
      files += n;
      if (n < BATCH) break;
    }
    return { results: expired, files };
  }
}
