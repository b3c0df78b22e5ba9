import { gpuMatches } from "../../protocol/gpu-names.js";
import type { GpuInfo } from "../../protocol/frames.js";
import type { Requirements } from "../../protocol/jobs.js";

/**
 * Whether a miner can run a job (DESIGN.md §4). Requirements are hard constraints:
 * `gpu_type` (loose name match), `min_vram_gb` (per GPU, total VRAM) and `gpu_count` (GPUs on
 * the one miner that satisfy the other two). A job without GPU requirements runs anywhere,
 * CPU-only miners included. The miner must serve the model.
 */
export function minerCanRun(
  job: { model: string; requirements: Requirements },
  miner: { models: readonly string[]; gpus: readonly GpuInfo[] },
): boolean {
  if (!miner.models.includes(job.model)) return false;
  const r = job.requirements;
  if (r.gpu_type === undefined && r.gpu_count === undefined && r.min_vram_gb === undefined) return true;
  // Cards are sold by decimal GB and report a little less in MiB (a "16 GB" V100 shows
  // 16160 MiB), so a GB here is 1000 MiB: min_vram_gb 16 admits it.
  const minMb = (r.min_vram_gb ?? 0) * 1000;
  const fitting = miner.gpus.filter(
    (g) => g.vram_total_mb >= minMb && (r.gpu_type === undefined || gpuMatches(r.gpu_type, g.name)),
  );
  return fitting.length >= (r.gpu_count ?? 1);
}
