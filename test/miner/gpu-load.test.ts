import { readFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { silentLogger } from "../../src/common/logger.js";
import { GpuLoadSampler } from "../../src/miner/gpu/gpu-load.js";
import type { CommandRunner } from "../../src/miner/gpu/nvidia-smi.js";

const fixture = (name: string): string => readFileSync(path.join(import.meta.dirname, "..", "fixtures", "nvidia-smi", name), "utf8");

describe("GpuLoadSampler (recorded nvidia-smi output)", () => {
  it("reads utilisation and free VRAM of the GPUs the miner uses, leaving out one in error", async () => {
    const run: CommandRunner = () => Promise.resolve({ code: 0, stdout: fixture("2x-a100-80gb.txt"), stderr: "" });
    const s = new GpuLoadSampler({ command: "nvidia-smi", runner: run, indices: [0, 1], log: silentLogger() });
    expect(s.current).toEqual([]);
    expect(await s.sample()).toEqual([
      { index: 0, utilization_percent: 0, vram_free_mb: 81050 },
      { index: 1, utilization_percent: 87, vram_free_mb: 41210 },
    ]);
    const broken = new GpuLoadSampler({ command: "nvidia-smi", runner: () => Promise.resolve({ code: 0, stdout: fixture("gpu-in-error.txt"), stderr: "" }), indices: [0, 1, 2, 3, 4, 5, 6, 7], log: silentLogger() });
    // GPU 1 reads "[GPU requires reset]": left out, GPU 0 kept.
    expect(await broken.sample()).toEqual([{ index: 0, utilization_percent: 0, vram_free_mb: 81050 }]);
  });

  it("a failing nvidia-smi leaves no reading and warns once", async () => {
    const warnings: string[] = [];
    const log = { ...silentLogger(), warn: (_o: unknown, msg: string) => void warnings.push(msg) } as unknown as ReturnType<typeof silentLogger>;
    let code = 9;
    const s = new GpuLoadSampler({ command: "nvidia-smi", runner: () => Promise.resolve({ code, stdout: fixture("2x-a100-80gb.txt"), stderr: "" }), indices: [1], log });
    expect(await s.sample()).toEqual([]);
    expect(await s.sample()).toEqual([]);
    expect(warnings).toHaveLength(1);
    code = 0;
    expect(await s.sample()).toEqual([{ index: 1, utilization_percent: 87, vram_free_mb: 41210 }]);
  });
});
