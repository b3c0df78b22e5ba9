import { availableParallelism, freemem, totalmem } from "node:os";
import path from "node:path";
import { loadModelInfo, type ModelInfo } from "../inference/models/model-info.js";
import type { GpuInfo } from "../protocol/frames.js";
import { computeSlots, type MinerConfig } from "./config.js";

/**
 * How many jobs a miner runs at once when the config leaves it open (`[miner] max_concurrent`
 * and `max_concurrent_per_gpu` both 0): as many as one device batches (`[inference] max_batch`,
 * whose decode steps cost little more than one) and its memory holds.
 *
 * - GPU, each: its free VRAM, less the weights of every model served and a reserve
 *   (the CUDA context, onnxruntime's arena and workspace), divided by the KV cache one sequence
 *   needs at the full context of the largest model; at most max_batch; the miner's slots are
 *   the sum over the GPUs it runs on. A GPU too small for even one full-context sequence still
 *   gets one slot, as before: it is selected and the engine sends it work (least busy device
 *   first), shorter sequences may fit, and the reason says it is too small (leave it out with
 *   `[gpus] devices`).
 * - CPU: BATCH_PER_CORE per core (measured: past that, more sequences in a step stop paying),
 *   and what half the free memory holds after the weights; at most max_batch, at least one.
 *
 * KV cache per sequence: 2 (K and V) × n_layer × n_ctx × n_embd × bytes per element (4 for float32).
 */
export interface Concurrency {
  slots: number;
  /** One short sentence for the log and the banner: the hardware, the model, and what bounded it. */
  reason: string;
}

/** What sizing needs of one model. */
export interface ModelFootprint {
  name: string;
  /** Loaded once per device. */
  weightBytes: number;
  /** K and V of every layer for one sequence at the model's full context. */
  kvBytesPerSequence: number;
}

export interface HostFacts {
  /** CPUs this process may use. */
  cpuCores: number;
  freeBytes: number;
  totalBytes: number;
}

export interface ConcurrencyInput {
  miner: Pick<MinerConfig["miner"], "maxConcurrent" | "maxConcurrentPerGpu">;
  maxBatch: number;
  /** GPUs the engine runs on; empty for a CPU miner. */
  gpus: readonly GpuInfo[];
  host: HostFacts;
  /** The models served; empty when there are none to size against (the fake engine). */
  models: readonly ModelFootprint[];
}

/**
 * Sequences per core past which batching stops paying on CPU. gpt2-124m-random on 2 shared
 * cores (bench/batching.ts child runs, batched only, 5 alternating rounds, medians): 4 at once
 * 40.6 tokens/s, 8 at once 116.4 (2.9×), 16 at once 127.8 (1.10× of 8, for twice the KV memory
 * and twice each job's time per token).
 */
export const BATCH_PER_CORE = 4;
/** Share of the free memory a CPU miner plans to use (the rest: the OS, a coordinator beside it, other processes). */
export const CPU_MEMORY_SHARE = 0.5;
/** VRAM left aside on each GPU: the larger of this and GPU_RESERVE_SHARE of its total. */
export const GPU_RESERVE_MIB = 1024;
export const GPU_RESERVE_SHARE = 0.1;

const MIB = 1024 * 1024;
const GIB = 1024 * MIB;

/** The miner's concurrency: explicit settings win; otherwise chosen from the hardware. */
export function defaultConcurrency(input: ConcurrencyInput): Concurrency {
  const { miner, gpus } = input;
  const capped = (c: Concurrency): Concurrency =>
    miner.maxConcurrent > 0 && miner.maxConcurrent < c.slots ? { slots: miner.maxConcurrent, reason: `${c.reason}, capped by [miner] max_concurrent = ${miner.maxConcurrent}` } : c;
  if (gpus.length === 0) {
    if (miner.maxConcurrent > 0) return { slots: miner.maxConcurrent, reason: `[miner] max_concurrent = ${miner.maxConcurrent}` };
    if (input.models.length === 0) return { slots: 1, reason: "no model to size against: 1" };
    return cpuConcurrency(input);
  }
  if (miner.maxConcurrentPerGpu > 0) {
    return capped({ slots: computeSlots({ ...miner, maxConcurrent: 0 }, gpus.length), reason: `[miner] max_concurrent_per_gpu = ${miner.maxConcurrentPerGpu} × ${plural(gpus.length, "GPU")}` });
  }
  if (input.models.length === 0) return capped({ slots: gpus.length, reason: `no model to size against: 1 per GPU × ${plural(gpus.length, "GPU")}` });
  return capped(gpuConcurrency(input));
}

/** A model's footprint from what its folder tells (config.json and the ONNX file). */
export function modelFootprint(info: Pick<ModelInfo, "name" | "nLayer" | "nEmbd" | "nPositions" | "kvType" | "sizeBytes">): ModelFootprint {
  const elementBytes = info.kvType === "float16" ? 2 : 4;
  // The folder's bytes are the ONNX file's stored weights (float32 or int8) plus a few MB of tokenizer.
  return { name: info.name, weightBytes: info.sizeBytes, kvBytesPerSequence: 2 * info.nLayer * info.nPositions * info.nEmbd * elementBytes };
}

/** The host as Node sees it: CPUs it may use, free and total memory (a cgroup limit when lower). */
export function hostFacts(): HostFacts {
  const total = totalmem();
  const limit = process.constrainedMemory() ?? 0;
  const constrained = limit > 0 && limit < total;
  return {
    cpuCores: availableParallelism(),
    freeBytes: constrained ? Math.min(freemem(), Math.max(0, limit - process.memoryUsage.rss())) : freemem(),
    totalBytes: constrained ? limit : total,
  };
}

/**
 * The concurrency of a miner with this config on these GPUs: reads the model folders
 * (config.json and the ONNX signature, not the weights) and the host. A model folder that
 * cannot be read is left out of the sizing; the engine reports it when it loads.
 */
export function minerConcurrency(config: MinerConfig, gpus: readonly GpuInfo[], host: HostFacts = hostFacts()): Concurrency {
  const models: ModelFootprint[] = [];
  if (config.fakeEngine === undefined) {
    for (const name of config.inference.models) {
      try {
        models.push(modelFootprint(loadModelInfo(path.resolve(config.inference.models_dir, name))));
      } catch {
        // The engine's initialize() refuses the folder with the precise error.
      }
    }
  }
  return defaultConcurrency({
    miner: config.miner,
    maxBatch: config.inference.max_batch,
    // execution_provider "cpu" runs on the CPU whatever GPUs were selected.
    gpus: config.inference.execution_provider === "cpu" ? [] : gpus,
    host,
    models,
  });
}

interface Sizing {
  /** Weights of every model, each loaded once. */
  weightBytes: number;
  /** The model with the largest KV cache per sequence: the one whose sequences bound the count. */
  largest: ModelFootprint;
}

function sizing(models: readonly ModelFootprint[]): Sizing {
  return {
    weightBytes: models.reduce((n, m) => n + m.weightBytes, 0),
    largest: models.reduce((a, b) => (b.kvBytesPerSequence > a.kvBytesPerSequence ? b : a)),
  };
}

function cpuConcurrency(input: ConcurrencyInput): Concurrency {
  const { host, maxBatch } = input;
  const { weightBytes, largest } = sizing(input.models);
  const cores = Math.max(1, host.cpuCores);
  const byCores = BATCH_PER_CORE * cores;
  const byMemory = Math.floor((host.freeBytes * CPU_MEMORY_SHARE - weightBytes) / largest.kvBytesPerSequence);
  const facts = `${plural(cores, "CPU core")}, ${gib(host.freeBytes)} of ${gib(host.totalBytes)} GiB free, ${modelNames(input.models, largest)}`;
  if (byMemory < 1) return { slots: 1, reason: `${facts}: 1 (half the free memory holds less than the weights and one ${mib(largest.kvBytesPerSequence)} MiB sequence)` };
  const slots = Math.min(maxBatch, byCores, byMemory);
  const bound = slots === maxBatch ? "max_batch" : slots === byCores ? `${BATCH_PER_CORE} per core` : `memory: ${mib(largest.kvBytesPerSequence)} MiB KV cache per sequence`;
  return { slots, reason: `${facts}: ${slots} (${bound})` };
}

function gpuConcurrency(input: ConcurrencyInput): Concurrency {
  const { maxBatch } = input;
  const { weightBytes, largest } = sizing(input.models);
  const perGpu = input.gpus.map((g) => {
    const reserveMib = Math.max(GPU_RESERVE_MIB, g.vram_total_mb * GPU_RESERVE_SHARE);
    const fits = Math.floor(((g.vram_free_mb - reserveMib) * MIB - weightBytes) / largest.kvBytesPerSequence);
    const slots = Math.min(maxBatch, Math.max(1, fits));
    const bound = fits < 1 ? "too small for the weights and one full-context sequence" : slots === maxBatch ? "max_batch" : `VRAM: ${mib(largest.kvBytesPerSequence)} MiB KV cache per sequence`;
    return { index: g.index, slots, free: `${gib(g.vram_free_mb * MIB)} GiB free`, bound };
  });
  const slots = perGpu.reduce((n, g) => n + g.slots, 0);
  // Neighbouring GPUs alike read once: "GPUs 0-7 140.2 GiB free: 8 each (max_batch)".
  const groups: { first: number; last: number; count: number; g: (typeof perGpu)[number] }[] = [];
  for (const g of perGpu) {
    const prev = groups.at(-1);
    if (prev !== undefined && g.index === prev.last + 1 && prev.g.free === g.free && prev.g.slots === g.slots && prev.g.bound === g.bound) {
      prev.last = g.index;
      prev.count++;
    } else groups.push({ first: g.index, last: g.index, count: 1, g });
  }
  const parts = groups.map(({ first, last, count, g }) =>
    count === 1 ? `GPU ${first} ${g.free}: ${g.slots} (${g.bound})` : `GPUs ${first}${count === 2 ? "," : "-"}${last} ${g.free}: ${g.slots} each (${g.bound})`,
  );
  return { slots, reason: `${plural(input.gpus.length, "GPU")}, ${modelNames(input.models, largest)}: ${slots} (${parts.join("; ")})` };
}

function modelNames(models: readonly ModelFootprint[], largest: ModelFootprint): string {
  return models.length === 1 ? largest.name : `${models.length} models, largest ${largest.name}`;
}

function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

function gib(bytes: number): string {
  return (bytes / GIB).toFixed(1);
}

function mib(bytes: number): string {
  return (bytes / MIB).toFixed(bytes < 10 * MIB ? 2 : 0);
}
