import { gpuMatches } from "../protocol/gpu-names.js";

/** One committed result, as the estimator learns from it. */
export interface SpeedSample {
  model: string;
  /** The first GPU of the miner that ran it, as the driver named it; null for a CPU miner. */
  gpu: string | null;
  /** Decode speed the miner reported (already clamped by the gateway), tokens/s. */
  tokensPerSecond: number;
  /** Tokens it generated. */
  tokens: number;
  /** Assigned → committed, seconds: what a slot was busy with this job. */
  jobSeconds: number;
  /** When it was committed, ms since the epoch. */
  at: number;
}

/** What was observed for a model (on a GPU type): smoothed means. */
export interface ObservedSpeed {
  tokensPerSecond: number;
  /** Per job beyond decoding (prefill, transfer, commit), seconds. */
  overheadSeconds: number;
  /** A slot's time per job, seconds (how fast the queue ahead drains). */
  jobSeconds: number;
  samples: number;
}

export interface ObservedSpeedsOptions {
  /** Weight of each new sample in the exponentially weighted means, (0, 1]. Default 0.2. */
  weight?: number;
  /** A mean not refreshed for this long is forgotten (estimates fall back to config), ms. Default 1 h. */
  maxAgeMs?: number;
}

interface Mean extends ObservedSpeed {
  at: number;
}

const ANY_GPU = "\u0000any";

/**
 * Exponentially weighted means of what miners report, per model and per GPU type (the miner's
 * first GPU's name; "cpu" for none), plus one per model over every GPU type. Pure: time comes in
 * with each call. The first sample of a key is taken as it is; each later one moves the mean by
 * `weight` (0.2: a sample's influence halves about every three results).
 */
export class ObservedSpeeds {
  private readonly means = new Map<string, Map<string, Mean>>();
  private weight = 0.2;
  private maxAgeMs = 3_600_000;

  constructor(options: ObservedSpeedsOptions = {}) {
    this.configure(options);
  }

  /** New weight or age (a config reload); the means so far are kept. */
  configure(options: ObservedSpeedsOptions): void {
    this.weight = options.weight ?? this.weight;
    this.maxAgeMs = options.maxAgeMs ?? this.maxAgeMs;
  }

  observe(s: SpeedSample): void {
    if (!(s.tokensPerSecond > 0) || !Number.isFinite(s.tokensPerSecond) || s.tokens <= 0 || !(s.jobSeconds >= 0)) return;
    const decodeSeconds = s.tokens / s.tokensPerSecond;
    const overhead = Math.max(0, s.jobSeconds - decodeSeconds);
    // A slot spends at least the decode time the miner reported on a job (clocks of the store and
    // the miner differ; a result committed at once must not make the queue look free).
    const jobSeconds = Math.max(s.jobSeconds, decodeSeconds);
    let byGpu = this.means.get(s.model);
    if (byGpu === undefined) {
      byGpu = new Map();
      this.means.set(s.model, byGpu);
    }
    for (const key of [s.gpu ?? "cpu", ANY_GPU]) {
      const cur = byGpu.get(key);
      if (cur === undefined || s.at - cur.at > this.maxAgeMs) {
        byGpu.set(key, { tokensPerSecond: s.tokensPerSecond, overheadSeconds: overhead, jobSeconds, samples: 1, at: s.at });
        continue;
      }
      const w = this.weight;
      cur.tokensPerSecond += w * (s.tokensPerSecond - cur.tokensPerSecond);
      cur.overheadSeconds += w * (overhead - cur.overheadSeconds);
      cur.jobSeconds += w * (jobSeconds - cur.jobSeconds);
      cur.samples += 1;
      cur.at = Math.max(cur.at, s.at);
    }
  }

  /**
   * What was observed for the model, on GPUs matching `gpuType` when the job asks for one (the
   * mean of the matching GPU types' means), else over all; undefined when nothing recent.
   */
  speed(model: string, gpuType: string | undefined, now: number): ObservedSpeed | undefined {
    const byGpu = this.means.get(model);
    if (byGpu === undefined) return undefined;
    const fresh = (m: Mean): boolean => now - m.at <= this.maxAgeMs;
    if (gpuType === undefined) {
      const m = byGpu.get(ANY_GPU);
      return m !== undefined && fresh(m) ? view(m) : undefined;
    }
    const matching = [...byGpu.entries()].filter(([k, m]) => k !== ANY_GPU && k !== "cpu" && gpuMatches(gpuType, k) && fresh(m)).map(([, m]) => m);
    if (matching.length === 0) return undefined;
    const avg = (f: (m: Mean) => number): number => matching.reduce((a, m) => a + f(m), 0) / matching.length;
    return {
      tokensPerSecond: avg((m) => m.tokensPerSecond),
      overheadSeconds: avg((m) => m.overheadSeconds),
      jobSeconds: avg((m) => m.jobSeconds),
      samples: matching.reduce((a, m) => a + m.samples, 0),
    };
  }
}

function view(m: Mean): ObservedSpeed {
  return { tokensPerSecond: m.tokensPerSecond, overheadSeconds: m.overheadSeconds, jobSeconds: m.jobSeconds, samples: m.samples };
}
