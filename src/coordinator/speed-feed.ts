import { errorMessage } from "../common/errors.js";
import type { Logger } from "../common/logger.js";
import type { ObservedSpeeds } from "./observed-speeds.js";
import type { JobEvents } from "./store/job-events.js";
import type { JobStore } from "./store/job-store.js";

/** Miners whose GPU name is remembered (a bigger fleet is re-read from the store). */
const MAX_MINERS_CACHED = 10_000;

/**
 * Feeds ObservedSpeeds from committed results: every `completed` change, this replica's (after
 * its commit) and, with replicas, the others' (their NOTIFY hints), is read back from the store
 * with its miner's GPU. So every replica learns from the whole fleet, whichever replica holds a
 * miner, at the cost of one read per completion (and one per miner first seen). Reads run in the
 * background; a failed one loses that sample only.
 */
export class SpeedFeed {
  private readonly unsubscribe: (() => void)[] = [];
  private readonly inFlight = new Set<Promise<void>>();
  private readonly gpuOf = new Map<string, string | null>();

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

  /** Stops listening and waits for the reads under way. Idempotent. */
  async stop(): Promise<void> {
    for (const u of this.unsubscribe.splice(0)) u();
    await Promise.all([...this.inFlight]);
  }

  private learn(jobId: string): void {
    const p = this.read(jobId).catch((err: unknown) => this.deps.log.debug({ err: errorMessage(err), jobId }, "observed speed not read"));
    this.inFlight.add(p);
    void p.finally(() => this.inFlight.delete(p));
  }

  private async read(jobId: string): Promise<void> {
    const job = await this.deps.store.getJobById(jobId);
    const r = job?.result;
    if (job === null || r === null || r === undefined || job.completedAt === null || job.assignedAt === null) return;
    this.deps.speeds.observe({
      model: job.model,
      gpu: job.minerId === null ? null : await this.gpu(job.minerId),
      tokensPerSecond: r.tokensPerSecond,
      tokens: r.usage.completion_tokens,
      jobSeconds: Math.max(0, job.completedAt - job.assignedAt) / 1000,
      at: job.completedAt,
    });
  }

  private async gpu(minerId: string): Promise<string | null> {
    const known = this.gpuOf.get(minerId);
    if (known !== undefined) return known;
    const miner = await this.deps.store.getMiner(minerId);
    const name = miner?.gpus[0]?.name ?? null;
    if (miner === null) return null;
    if (this.gpuOf.size >= MAX_MINERS_CACHED) this.gpuOf.clear();
    this.gpuOf.set(minerId, name);
    return name;
  }
}
