import { readFileSync } from "node:fs";
import path from "node:path";
import { Value } from "@sinclair/typebox/value";
import { describe, expect, it } from "vitest";
import { loadModelInfo } from "../../src/inference/models/model-info.js";
import { compileMinerConfig, MinerConfigSchema, type MinerConfig, type MinerConfigRaw } from "../../src/miner/config.js";
import {
  BATCH_PER_CORE,
  defaultConcurrency,
  minerConcurrency,
  modelFootprint,
  type ConcurrencyInput,
  type HostFacts,
  type ModelFootprint,
} from "../../src/miner/default-concurrency.js";
import { detectGpus, selectedGpus } from "../../src/miner/gpu/detect.js";
import type { CommandRunner } from "../../src/miner/gpu/nvidia-smi.js";
import type { GpuInfo } from "../../src/protocol/frames.js";

const ROOT = path.join(import.meta.dirname, "..", "..");
const FIXTURES = path.join(ROOT, "test", "fixtures", "nvidia-smi");
const MIB = 1024 * 1024;
const GIB = 1024 * MIB;

function raw(edit: (r: MinerConfigRaw) => void = () => undefined): MinerConfigRaw {
  const r = Value.Default(MinerConfigSchema, {}) as MinerConfigRaw;
  edit(r);
  return r;
}

function config(edit?: (r: MinerConfigRaw) => void): MinerConfig {
  return compileMinerConfig(raw(edit), undefined);
}

/** The GPUs a miner selects from a recorded nvidia-smi run (and config overrides). */
async function gpusFrom(file: string | undefined, overrides: MinerConfig["gpus"]["overrides"] = []): Promise<GpuInfo[]> {
  const runner: CommandRunner =
    file === undefined
      ? () => Promise.reject(Object.assign(new Error("spawn nvidia-smi ENOENT"), { code: "ENOENT" }))
      : () => Promise.resolve({ code: 0, stdout: readFileSync(path.join(FIXTURES, file), "utf8"), stderr: "" });
  return selectedGpus(await detectGpus({ gpus: { ...config().gpus, overrides }, runner, graphics: null }));
}

// gpt2-124m-random as built: 499,182,965 bytes in its folder; KV 2 × 12 layers × 1024 positions × 768 × 4 B = 72 MiB.
const GPT2_124M: ModelFootprint = { name: "gpt2-124m-random", weightBytes: 499_182_965, kvBytesPerSequence: 2 * 12 * 1024 * 768 * 4 };
// A GPT-2 XL shape at an 8192 context: 1.56 B float32 parameters (5,942 MiB), KV 2 × 48 × 8192 × 1600 × 4 B = 4,800 MiB.
const XL_8K: ModelFootprint = { name: "xl-8k", weightBytes: 1_557_611_200 * 4, kvBytesPerSequence: 2 * 48 * 8192 * 1600 * 4 };

const HOST: HostFacts = { cpuCores: 2, freeBytes: 20 * GIB, totalBytes: 23.4 * GIB };
const AUTO = { maxConcurrent: 0, maxConcurrentPerGpu: 0 };

function input(over: Partial<ConcurrencyInput>): ConcurrencyInput {
  return { miner: AUTO, maxBatch: 8, gpus: [], host: HOST, models: [GPT2_124M], ...over };
}

describe("the shipped defaults", () => {
  it("leave both concurrency settings to the hardware", () => {
    expect(config().miner).toMatchObject({ maxConcurrent: 0, maxConcurrentPerGpu: 0 });
  });
});

describe("defaultConcurrency on a CPU miner", () => {
  it("runs max_batch at once when the cores and memory allow it", () => {
    expect(defaultConcurrency(input({}))).toEqual({ slots: 8, reason: "2 CPU cores, 20.0 of 23.4 GiB free, gpt2-124m-random: 8 (max_batch)" });
  });

  it("runs BATCH_PER_CORE per core on a host with few cores", () => {
    const c = defaultConcurrency(input({ host: { ...HOST, cpuCores: 1 } }));
    expect(c.slots).toBe(BATCH_PER_CORE);
    expect(c.reason).toBe(`1 CPU core, 20.0 of 23.4 GiB free, gpt2-124m-random: ${BATCH_PER_CORE} (${BATCH_PER_CORE} per core)`);
  });

  it("never runs more than max_batch, whatever the host", () => {
    expect(defaultConcurrency(input({ maxBatch: 1, host: { ...HOST, cpuCores: 64 } })).slots).toBe(1);
    expect(defaultConcurrency(input({ maxBatch: 16, host: { ...HOST, cpuCores: 64 } })).slots).toBe(16);
  });

  it("runs what half the free memory holds after the weights", () => {
    // 2 GiB free: (1 GiB − 499 MB of weights) / 72 MiB = 7.6 → 7.
    expect(defaultConcurrency(input({ host: { ...HOST, freeBytes: 2 * GIB } }))).toEqual({
      slots: 7,
      reason: "2 CPU cores, 2.0 of 23.4 GiB free, gpt2-124m-random: 7 (memory: 72 MiB KV cache per sequence)",
    });
  });

  it("runs one job when the memory is too small for the weights and one sequence", () => {
    const c = defaultConcurrency(input({ host: { ...HOST, freeBytes: 0.8 * GIB } }));
    expect(c.slots).toBe(1);
    expect(c.reason).toMatch(/: 1 \(half the free memory holds less than the weights and one 72 MiB sequence\)$/);
  });

  it("with several models counts every model's weights and the largest KV cache", () => {
    const small: ModelFootprint = { name: "small", weightBytes: 200 * MIB, kvBytesPerSequence: MIB };
    // 2 GiB free: (1024 MiB − 476 MiB − 200 MiB) / 72 MiB = 4.8 → 4; without the small model's weights it would be 7.
    expect(defaultConcurrency(input({ host: { ...HOST, freeBytes: 2 * GIB }, models: [small, GPT2_124M] }))).toEqual({
      slots: 4,
      reason: "2 CPU cores, 2.0 of 23.4 GiB free, 2 models, largest gpt2-124m-random: 4 (memory: 72 MiB KV cache per sequence)",
    });
  });

  it("takes [miner] max_concurrent as it is, even above max_batch or the memory", () => {
    expect(defaultConcurrency(input({ miner: { ...AUTO, maxConcurrent: 3 }, host: { ...HOST, freeBytes: 0.1 * GIB } }))).toEqual({ slots: 3, reason: "[miner] max_concurrent = 3" });
    expect(defaultConcurrency(input({ miner: { ...AUTO, maxConcurrent: 12 } })).slots).toBe(12);
  });

  it("ignores max_concurrent_per_gpu without GPUs", () => {
    expect(defaultConcurrency(input({ miner: { ...AUTO, maxConcurrentPerGpu: 2 } })).slots).toBe(8);
  });

  it("runs one job with no model to size against (the fake engine)", () => {
    expect(defaultConcurrency(input({ models: [] }))).toEqual({ slots: 1, reason: "no model to size against: 1" });
  });
});

describe("defaultConcurrency on GPUs (recorded nvidia-smi)", () => {
  it("one RTX 4090 and gpt2-124m: max_batch", async () => {
    expect(defaultConcurrency(input({ gpus: await gpusFrom("1x-rtx4090.txt") }))).toEqual({
      slots: 8,
      reason: "1 GPU, gpt2-124m-random: 8 (GPU 0 23.4 GiB free: 8 (max_batch))",
    });
  });

  it("eight H200s: max_batch on each, summed", async () => {
    const gpus = await gpusFrom("8x-h200.txt");
    expect(defaultConcurrency(input({ gpus }))).toEqual({ slots: 64, reason: "8 GPUs, gpt2-124m-random: 64 (GPUs 0-7 139.8 GiB free: 8 each (max_batch))" });
    expect(defaultConcurrency(input({ gpus, maxBatch: 32 })).slots).toBe(256);
  });

  it("a large model on one RTX 4090: what its free VRAM holds after the weights and the reserve", async () => {
    // (23,988 MiB free − 2,456 MiB reserve (10%) − 5,942 MiB weights) / 4,800 MiB = 3.2 → 3.
    expect(defaultConcurrency(input({ gpus: await gpusFrom("1x-rtx4090.txt"), models: [XL_8K] }))).toEqual({
      slots: 3,
      reason: "1 GPU, xl-8k: 3 (GPU 0 23.4 GiB free: 3 (VRAM: 4800 MiB KV cache per sequence))",
    });
  });

  it("two A100s, the second busy: each GPU by its own free VRAM", async () => {
    // GPU 0: (81,050 − 8,192 − 5,942) / 4,800 = 13.9 → max_batch 8; GPU 1: (41,210 − 8,192 − 5,942) / 4,800 = 5.6 → 5.
    expect(defaultConcurrency(input({ gpus: await gpusFrom("2x-a100-80gb.txt"), models: [XL_8K] }))).toEqual({
      slots: 13,
      reason: "2 GPUs, xl-8k: 13 (GPU 0 79.2 GiB free: 8 (max_batch); GPU 1 40.2 GiB free: 5 (VRAM: 4800 MiB KV cache per sequence))",
    });
  });

  it("only the healthy GPUs count (one in error, one lost)", async () => {
    expect(defaultConcurrency(input({ gpus: await gpusFrom("gpu-in-error.txt") })).slots).toBe(8);
    // The V100 that answered: (16,139 − 1,638 − 5,942) / 4,800 = 1.8 → 1.
    expect(defaultConcurrency(input({ gpus: await gpusFrom("gpu-lost.txt"), models: [XL_8K] })).slots).toBe(1);
  });

  it("a GPU too small for the weights and one full-context sequence still gets one slot, and says why", async () => {
    // A declared 8 GiB GPU beside the RTX 4090: (8,192 − 1,024 − 5,942) MiB < 4,800 MiB.
    const gpus = await gpusFrom("1x-rtx4090.txt", [{ index: 1, name: "small", vram_total_mb: 8192 }]);
    expect(gpus.map((g) => g.index)).toEqual([0, 1]);
    expect(defaultConcurrency(input({ gpus, models: [XL_8K] }))).toEqual({
      slots: 4,
      reason: "2 GPUs, xl-8k: 4 (GPU 0 23.4 GiB free: 3 (VRAM: 4800 MiB KV cache per sequence); GPU 1 8.0 GiB free: 1 (too small for the weights and one full-context sequence))",
    });
    const alone = await gpusFrom(undefined, [{ index: 0, vram_total_mb: 4096 }]);
    expect(defaultConcurrency(input({ gpus: alone, models: [XL_8K] })).slots).toBe(1);
  });

  it("explicit max_concurrent_per_gpu wins over the VRAM, capped by max_concurrent", async () => {
    const gpus = await gpusFrom("8x-h200.txt");
    expect(defaultConcurrency(input({ gpus, miner: { maxConcurrent: 0, maxConcurrentPerGpu: 2 } }))).toEqual({ slots: 16, reason: "[miner] max_concurrent_per_gpu = 2 × 8 GPUs" });
    expect(defaultConcurrency(input({ gpus, miner: { maxConcurrent: 5, maxConcurrentPerGpu: 2 } }))).toEqual({
      slots: 5,
      reason: "[miner] max_concurrent_per_gpu = 2 × 8 GPUs, capped by [miner] max_concurrent = 5",
    });
    // Above max_batch too: the operator asked for it.
    expect(defaultConcurrency(input({ gpus, miner: { maxConcurrent: 0, maxConcurrentPerGpu: 20 } })).slots).toBe(160);
  });

  it("max_concurrent caps the figure chosen from VRAM, and only caps it", async () => {
    const gpus = await gpusFrom("8x-h200.txt");
    const c = defaultConcurrency(input({ gpus, miner: { maxConcurrent: 3, maxConcurrentPerGpu: 0 } }));
    expect(c.slots).toBe(3);
    expect(c.reason).toMatch(/^8 GPUs, gpt2-124m-random: 64 \(.*\), capped by \[miner\] max_concurrent = 3$/);
    expect(defaultConcurrency(input({ gpus, miner: { maxConcurrent: 100, maxConcurrentPerGpu: 0 } })).slots).toBe(64);
  });

  it("one slot per GPU with no model to size against (the fake engine)", async () => {
    expect(defaultConcurrency(input({ gpus: await gpusFrom("8x-h200.txt"), models: [] }))).toEqual({ slots: 8, reason: "no model to size against: 1 per GPU × 8 GPUs" });
  });
});

describe("minerConcurrency", () => {
  const tiny = (r: MinerConfigRaw): void => {
    r.inference.models_dir = path.join(ROOT, "models");
    r.inference.models = ["tiny-gpt2"];
  };

  it("sizes against the model folder's config.json and files", () => {
    const info = loadModelInfo(path.join(ROOT, "models", "tiny-gpt2"));
    const f = modelFootprint(info);
    expect(f.kvBytesPerSequence).toBe(2 * info.nLayer * info.nPositions * info.nEmbd * 4);
    expect(f.weightBytes).toBe(info.sizeBytes);
    expect(f.weightBytes).toBeGreaterThan(info.parameters * 4);
    const c = minerConcurrency(config(tiny), [], HOST);
    expect(c).toEqual({ slots: 8, reason: "2 CPU cores, 20.0 of 23.4 GiB free, tiny-gpt2: 8 (max_batch)" });
  });

  it("follows [inference] max_batch", () => {
    expect(minerConcurrency(config((r) => (tiny(r), (r.inference.max_batch = 3))), [], HOST).slots).toBe(3);
  });

  it('sizes a miner whose execution_provider is "cpu" by its CPU, whatever GPUs were selected', async () => {
    const gpus = await gpusFrom("8x-h200.txt");
    const c = minerConcurrency(config((r) => (tiny(r), (r.inference.execution_provider = "cpu"))), gpus, HOST);
    expect(c.reason).toMatch(/^2 CPU cores, /);
    expect(c.slots).toBe(8);
    expect(minerConcurrency(config(tiny), gpus, HOST).slots).toBe(64);
  });

  it("does not size against the fake engine's models, nor against a folder it cannot read", () => {
    expect(minerConcurrency(config((r) => (tiny(r), (r.fake_engine.enabled = true))), [], HOST).slots).toBe(1);
    expect(minerConcurrency(config((r) => (tiny(r), (r.inference.models = ["no-such-model"]))), [], HOST)).toEqual({ slots: 1, reason: "no model to size against: 1" });
  });
});
