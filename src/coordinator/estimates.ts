import type { CoordinatorConfig } from "./config.js";
import type { ObservedSpeed } from "./observed-speeds.js";
import type { Requirements } from "../protocol/jobs.js";

/** The fleet that could run a job, as the estimate sees it. */
export interface QueueView {
  /** Queued jobs of the same model, picked before this one. */
  ahead: number;
  /** Slots of the connected miners that could run it (0 when none is connected). */
  slots: number;
  /** Of those slots, how many hold a lease now. */
  busy: number;
}

/**
 * Estimates returned by POST /v1/jobs and POST /v1/completions. `observed` is what miners
 * reported for the model (and GPU type) lately (ObservedSpeeds); without it, config/coordinator.toml:
 *
 *   tokens_per_second = observed ?? estimates.tokens_per_second[model] ?? estimates.default_tokens_per_second
 *   overhead          = observed ?? estimates.overhead_seconds
 *   run_seconds       = max_new_tokens / tokens_per_second
 *   per_job           = observed slot time per job ?? run_seconds
 *   slots             = max(1, slots)
 *   before            = max(0, ahead + busy + 1 − slots)      (jobs that must end before a slot is ours)
 *   estimated_time_seconds = overhead + before / slots × per_job + run_seconds
 *   estimated_cost    = max_new_tokens / 1000 × pricing.per_1k_tokens[model ?? "default"]
 *                     + run_seconds / 3600 × gpu_count × pricing.per_gpu_hour[gpu_type ?? "default"]
 *       (the GPU-hour term only when the job asks for a gpu_type)
 *
 * The queue drains as a fluid: `slots` jobs at a time, each taking `per_job`. Rounded to 1/100 s
 * and 1/1e6 of the currency unit.
 */
export function estimateJob(
  config: Pick<CoordinatorConfig, "estimates" | "pricing">,
  job: { model: string; maxNewTokens: number; requirements: Requirements },
  queue: QueueView,
  observed?: ObservedSpeed,
): { estimatedTimeSeconds: number; estimatedCost: number } {
  const tps = observed?.tokensPerSecond ?? config.estimates.tokensPerSecond[job.model] ?? config.estimates.defaultTokensPerSecond;
  const overhead = observed?.overheadSeconds ?? config.estimates.overheadSeconds;
  const run = job.maxNewTokens / tps;
  const perJob = observed?.jobSeconds ?? run;
  const slots = Math.max(1, queue.slots);
  const before = Math.max(0, queue.ahead + queue.busy + 1 - slots);
  const time = overhead + (before / slots) * perJob + run;
  const perK = config.pricing.per1kTokens[job.model] ?? config.pricing.per1kTokens.default ?? 0;
  let cost = (job.maxNewTokens / 1000) * perK;
  const gpuType = job.requirements.gpu_type;
  if (gpuType !== undefined) {
    const perHour = config.pricing.perGpuHour[gpuType.toLowerCase()] ?? config.pricing.perGpuHour.default ?? 0;
    cost += (run / 3600) * (job.requirements.gpu_count ?? 1) * perHour;
  }
  return { estimatedTimeSeconds: Math.round(time * 100) / 100, estimatedCost: Math.round(cost * 1e6) / 1e6 };
}
