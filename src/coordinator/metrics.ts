import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";
import { JOB_STATES } from "../protocol/version.js";
import { normaliseGpuName } from "../protocol/gpu-names.js";
import type { GpuInfo } from "../protocol/frames.js";

/**
 * Prometheus metrics of the coordinator (GET /metrics, unauthenticated like /healthz).
 * Gauges that mirror state (jobs by state, miners, GPUs) are read at scrape time from the
 * sources given to {@link CoordinatorMetrics.bind}; counters and the histogram are fed where
 * things happen (submit, assign, result, rate-limit refusal).
 */
export class CoordinatorMetrics {
  readonly registry = new Registry();
  readonly submitted: Counter;
  readonly timeToAssign: Histogram;
  readonly results: Counter<"outcome">;
  readonly rateLimited: Counter;
  readonly reaped: Counter<"outcome">;
  readonly duplicateMiners: Counter;
  private sources: {
    countByState: () => Promise<Record<string, number>>;
    miners: () => { gpus: GpuInfo[] }[];
  } = { countByState: () => Promise.resolve({}), miners: () => [] };

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: "aitbc_coordinator_" });
    this.submitted = new Counter({ name: "aitbc_jobs_submitted_total", help: "Jobs accepted by POST /v1/jobs", registers: [this.registry] });
    this.timeToAssign = new Histogram({
      name: "aitbc_time_to_assign_seconds",
      help: "From submit to the assign sent to a miner (each attempt)",
      buckets: [0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 1800],
      registers: [this.registry],
    });
    this.results = new Counter({
      name: "aitbc_results_total",
      help: "Results received from miners, by outcome (committed, duplicate, stale, invalid)",
      labelNames: ["outcome"],
      registers: [this.registry],
    });
    this.rateLimited = new Counter({ name: "aitbc_rate_limited_total", help: "Requests refused with 429 by the per-key rate limits", registers: [this.registry] });
    this.reaped = new Counter({
      name: "aitbc_reaped_total",
      help: "Jobs the reaper moved, by outcome (requeued, failed, cancelled, timed_out, expired)",
      labelNames: ["outcome"],
      registers: [this.registry],
    });
    this.duplicateMiners = new Counter({
      name: "aitbc_duplicate_miners_total",
      help: "Miner hellos refused (duplicate_miner) because another miner process holds a live session under the same key and name",
      registers: [this.registry],
    });
    const sources = (): typeof this.sources => this.sources;
    new Gauge({
      name: "aitbc_jobs",
      help: "Jobs by state",
      labelNames: ["state"],
      registers: [this.registry],
      async collect() {
        const counts = await sources().countByState();
        for (const s of JOB_STATES) this.set({ state: s }, counts[s] ?? 0);
      },
    });
    new Gauge({
      name: "aitbc_queue_depth",
      help: "Jobs waiting for a miner",
      registers: [this.registry],
      async collect() {
        this.set((await sources().countByState()).queued ?? 0);
      },
    });
    new Gauge({
      name: "aitbc_miners_connected",
      help: "Miners connected to the gateway",
      registers: [this.registry],
      collect() {
        this.set(sources().miners().length);
      },
    });
    new Gauge({
      name: "aitbc_gpus",
      help: "GPUs of connected miners, by normalised type",
      labelNames: ["type"],
      registers: [this.registry],
      collect() {
        this.reset();
        const counts = new Map<string, number>();
        for (const m of sources().miners()) for (const g of m.gpus) counts.set(normaliseGpuName(g.name), (counts.get(normaliseGpuName(g.name)) ?? 0) + 1);
        for (const [type, n] of counts) this.set({ type }, n);
      },
    });
  }

  bind(sources: CoordinatorMetrics["sources"]): void {
    this.sources = sources;
  }
}
