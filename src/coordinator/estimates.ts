import type { CoordinatorConfig } from "./config.js";
import type { Requirements } from "../protocol/jobs.js";

/**
 * Estimates returned by POST /v1/jobs (all inputs come from config/coordinator.toml):
 *
 *   tokens_per_second = estimates.tokens_per_second[model] ?? estimates.default_tokens_per_second
 *   run_seconds       = max_new_tokens / tokens_per_second
 *   estimated_time_seconds = overhead_seconds + run_seconds × (1 + queued_jobs_for_model_ahead / eligible_slots)
 *       (eligible_slots = connected miners that could run it, at least 1)
 *   estimated_cost    = max_new_tokens / 1000 × pricing.per_1k_tokens[model ?? "default"]
 *                     + run_seconds / 3600 × gpu_count × pricing.per_gpu_hour[gpu_type ?? "default"]
 *       (the GPU-hour term only when the job asks for a gpu_type)
 *
 * Rounded to 1/100 s and 1/1e6 of the currency unit.
 */
export function estimateJob(
  config: Pick<CoordinatorConfig, "estimates" | "pricing">,
  job: { model: string; maxNewTokens: number; requirements: Requirements },
  queue: { ahead: number; eligibleMiners: number },
): { estimatedTimeSeconds: number; estimatedCost: number } {
  const tps = config.estimates.tokensPerSecond[job.model] ?? config.estimates.defaultTokensPerSecond;
  const run = job.maxNewTokens / tps;
  const slots = Math.max(1, queue.eligibleMiners);
  const time = config.estimates.overheadSeconds + run * (1 + queue.ahead / slots);
  const perK = config.pricing.per1kTokens[job.model] ?? config.pricing.per1kTokens.default ?? 0;
  let cost = (job.maxNewTokens / 1000) * perK;
  const gpuType = job.requirements.gpu_type;
  if (gpuType !== undefined) {
    const perHour = config.pricing.perGpuHour[gpuType.toLowerCase()] ?? config.pricing.perGpuHour.default ?? 0;
    cost += (run / 3600) * (job.requirements.gpu_count ?? 1) * perHour;
  }
  return { estimatedTimeSeconds: Math.round(time * 100) / 100, estimatedCost: Math.round(cost * 1e6) / 1e6 };
}
