import { errorMessage } from "../common/errors.js";
import type { Logger } from "../common/logger.js";
import type { ObservedSpeeds } from "./observed-speeds.js";
import type { JobEvents } from "./store/job-events.js";
import type { JobStore } from "./store/job-store.js";

/** Miners whose GPU name is remembered (a bigger fleet is re-read from the store). */
const MAX_MINERS_CACHED = 10_000;
/** How long completions gather before they are read together. */
const BATCH_MS = 200;
/** Most completions one read takes. */
const BATCH_MAX = 500;

/**
 * Feeds ObservedSpeeds from committed results: every `completed` change, this replica's (after
 * its commit) and, with replicas, the others' (their NOTIFY hints), is read back from the store
 * with its miner's GPU. So every replica learns from the whole fleet, whichever replica holds a
 * miner. Completions gather for BATCH_MS and are read together, one read for the jobs and one for
 * the miners not seen before (bench:fleet: one read per completion and per miner, on every
 * replica, was six queries of a job's forty); estimates are smoothed, so a fifth of a second
 * late costs nothing. Reads run in the background; a failed one loses those samples only.
 */
export class SpeedFeed {
  private readonly unsubscribe: (() => void)[] = [];
  private readonly inFlight = new Set<Promise<void>>();
  private readonly gpuOf = new Map<string, string | null>();
  private pending = new Set<string>();
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly deps: { store: JobStore; events: JobEvents; speeds: ObservedSpeeds; log: Logger },
  ) {}

  start(): void {
    const { events } = this.deps;
    this.unsubscribe.push(
      events.onChange((e) => {
        if (e.type === "completed") this.learn(e.jobId);
      }),
      events.onRemote((c) => {
        if (c.type === "completed") this.learn(c.jobId);
      }),
    );
  }

  /** Stops listening, reads what has gathered and waits for the reads under way. Idempotent. */
  async stop(): Promise<void> {
    for (const u of this.unsubscribe.splice(0)) u();
    this.flush();
    await Promise.all([...this.inFlight]);
  }

  private learn(jobId: string): void {
    this.pending.add(jobId);
    if (this.pending.size >= BATCH_MAX) this.flush();
    else if (this.timer === undefined) {
      this.timer = setTimeout(() => this.flush(), BATCH_MS);
      this.timer.unref();
    }
  }

  private flush(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    if (this.pending.size === 0) return;
    const ids = [...this.pending];
    this.pending = new Set();
    const p = this.read(ids).catch((err: unknown) => this.deps.log.debug({ err: errorMessage(err), jobs: ids.length }, "observed speeds not read"));
    this.inFlight.add(p);
    void p.finally(() => this.inFlight.delete(p));
  }

  private async read(jobIds: string[]): Promise<void> {
    const jobs = await this.deps.store.getJobsById(jobIds);
    const unknown = [...new Set(jobs.flatMap((j) => (j.minerId !== null && !this.gpuOf.has(j.minerId) ? [j.minerId] : [])))];
    if (unknown.length > 0) {
      const miners = await this.deps.store.getMinersById(unknown);
      if (this.gpuOf.size + miners.length > MAX_MINERS_CACHED) this.gpuOf.clear();
      for (const m of miners) this.gpuOf.set(m.id, m.gpus[0]?.name ?? null);
    }
    // In the order they completed: the smoothing weighs the latest most.
    jobs.sort((a, b) => (a.completedAt ?? 0) - (b.completedAt ?? 0));
    for (const job of jobs) {
      const r = job.result;
      if (r === null || job.completedAt === null || job.assignedAt === null) continue;
      this.deps.speeds.observe({
        model: job.model,
        gpu: job.minerId === null ? null : (this.gpuOf.get(job.minerId) ?? null),
        tokensPerSecond: r.tokensPerSecond,
        tokens: r.usage.completion_tokens,
        jobSeconds: Math.max(0, job.completedAt - job.assignedAt) / 1000,
        at: job.completedAt,
      });
    }
  }
}
