import { gpuMatches } from "../protocol/gpu-names.js";
import type { Requirements } from "../protocol/jobs.js";
import { minerCanRun } from "./scheduler/matching.js";
import type { CoordinatorContext } from "./context.js";
import type { MinerRecord } from "./store/job-store.js";

/** Names listed in a reason, at most. */
const MAX_LISTED = 6;
/** Characters of one name (from a miner: bounded, control characters replaced). */
const MAX_NAME = 64;

function clean(name: string): string {
   
  const safe = name.replace(/[\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g, "?");
  return safe.length > MAX_NAME ? `${safe.slice(0, MAX_NAME - 1)}…` : safe;
}

/** "a, b, c" (or "a, b, … and 3 more"); "none" when empty. */
function list(names: Iterable<string>): string {
  const counts = new Map<string, number>();
  for (const n of names) counts.set(clean(n), (counts.get(clean(n)) ?? 0) + 1);
  const items = [...counts.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([n, c]) => (c > 1 ? `${n} ×${c}` : n));
  if (items.length === 0) return "none";
  return items.length <= MAX_LISTED ? items.join(", ") : `${items.slice(0, MAX_LISTED).join(", ")}, … and ${items.length - MAX_LISTED} more`;
}

/**
 * Why no connected miner can run a job, in words for its submitter (`waiting_reason`), or
 * undefined when some miner can. `miners` are the fleet's connected miners (every replica's);
 * `advertised` every model a miner has advertised to this coordinator since it started.
 */
export function waitingReason(
  job: { model: string; requirements: Requirements },
  miners: readonly Pick<MinerRecord, "models" | "gpus" | "draining">[],
  advertised: ReadonlySet<string>,
): string | undefined {
  const active = miners.filter((m) => !m.draining);
  if (active.some((m) => minerCanRun(job, m))) return undefined;
  const model = clean(job.model);
  if (active.length === 0) {
    return miners.length === 0 ? "no miner is connected" : `every connected miner is draining (${miners.length})`;
  }
  const serving = active.filter((m) => m.models.includes(job.model));
  if (serving.length === 0) {
    const served = list(new Set(active.flatMap((m) => m.models)));
    return advertised.has(job.model)
      ? `no connected miner serves model ${model} (served: ${served})`
      : `model ${model} is unknown: no miner has advertised it (served: ${served})`;
  }
  const r = job.requirements;
  const gpus = serving.flatMap((m) => m.gpus);
  const connected = list(gpus.map((g) => g.name));
  if (r.gpu_type !== undefined && !gpus.some((g) => gpuMatches(r.gpu_type!, g.name))) {
    return `no connected miner serving ${model} has a GPU matching ${clean(r.gpu_type)} (connected: ${connected})`;
  }
  if (r.min_vram_gb !== undefined && !gpus.some((g) => g.vram_total_mb >= r.min_vram_gb! * 1000)) {
    const most = Math.max(0, ...gpus.map((g) => g.vram_total_mb));
    return `no connected miner serving ${model} has a GPU with ${r.min_vram_gb} GB of VRAM (most: ${(most / 1000).toFixed(1)} GB; connected: ${connected})`;
  }
  return `no connected miner serving ${model} has ${r.gpu_count ?? 1} GPUs meeting the requirements on one host (connected: ${connected})`;
}

/**
 * The waiting reason of a job against the whole fleet: the miner directory's (this
 * coordinator's sessions, or with replicas every replica's from the miners table, read at most
 * once a second like eligible_miners).
 */
export async function fleetWaitingReason(ctx: CoordinatorContext, job: { model: string; requirements: Requirements }): Promise<string | undefined> {
  const miners = await ctx.miners.connected();
  const advertised = new Set([...ctx.advertisedModels, ...miners.flatMap((m) => m.models)]);
  return waitingReason(job, miners, advertised);
}
