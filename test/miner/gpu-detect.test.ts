import { readFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { compileMinerConfig, MinerConfigSchema, type MinerConfig } from "../../src/miner/config.js";
import { detectGpus, selectedGpus } from "../../src/miner/gpu/detect.js";
import { NVIDIA_SMI_ARGS, parseNvidiaSmiCsv, type CommandRunner } from "../../src/miner/gpu/nvidia-smi.js";
import { formatDetection } from "../../src/bin/commands/gpus.js";
import { Value } from "@sinclair/typebox/value";

const FIXTURES = path.join(import.meta.dirname, "..", "fixtures", "nvidia-smi");
const fixture = (name: string): string => readFileSync(path.join(FIXTURES, name), "utf8");

function gpusConfig(over: Partial<MinerConfig["gpus"]> = {}): MinerConfig["gpus"] {
  const raw = Value.Default(MinerConfigSchema, {}) as Parameters<typeof compileMinerConfig>[0];
  return { ...compileMinerConfig(raw, undefined).gpus, ...over };
}

/** Plays back a recorded nvidia-smi run and checks the miner asked for the right fields. */
function recorded(file: string, code = 0): CommandRunner {
  return (command, args) => {
    expect(command).toBe("nvidia-smi");
    expect(args).toEqual(NVIDIA_SMI_ARGS);
    return Promise.resolve({ code, stdout: fixture(file), stderr: "" });
  };
}

const notInstalled: CommandRunner = () =>
  Promise.reject(Object.assign(new Error("spawn nvidia-smi ENOENT"), { code: "ENOENT" }));

describe("parseNvidiaSmiCsv", () => {
  it("reads one RTX 4090", () => {
    const r = parseNvidiaSmiCsv(fixture("1x-rtx4090.txt"));
    expect(r.problems).toEqual([]);
    expect(r.gpus).toHaveLength(1);
    expect(r.gpus[0]).toMatchObject({
      index: 0,
      name: "NVIDIA GeForce RTX 4090",
      memoryTotalMb: 24564,
      memoryFreeMb: 23988,
      driverVersion: "550.54.15",
      pciBusId: "00000000:01:00.0",
      healthy: true,
    });
  });

  it("reads two A100s with their own free memory and utilisation", () => {
    const r = parseNvidiaSmiCsv(fixture("2x-a100-80gb.txt"));
    expect(r.gpus.map((g) => [g.index, g.memoryFreeMb, g.utilizationPercent])).toEqual([
      [0, 81050, 0],
      [1, 41210, 87],
    ]);
  });

  it("reads eight H200s in index order", () => {
    const r = parseNvidiaSmiCsv(fixture("8x-h200.txt"));
    expect(r.gpus.map((g) => g.index)).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    expect(new Set(r.gpus.map((g) => g.uuid)).size).toBe(8);
    expect(r.gpus.every((g) => g.name === "NVIDIA H200" && g.memoryTotalMb === 143771 && g.healthy)).toBe(true);
  });

  it("marks a GPU in error unhealthy with nvidia-smi's words", () => {
    const r = parseNvidiaSmiCsv(fixture("gpu-in-error.txt"));
    expect(r.gpus[0]!.healthy).toBe(true);
    expect(r.gpus[1]).toMatchObject({ index: 1, healthy: false, memoryTotalMb: null, utilizationPercent: null });
    expect(r.gpus[1]!.problem).toBe("GPU requires reset; Unknown Error");
  });

  it("keeps message lines as problems and the GPU rows around them", () => {
    const r = parseNvidiaSmiCsv(fixture("gpu-lost.txt"));
    expect(r.gpus.map((g) => g.name)).toEqual(["Tesla V100-SXM2-16GB"]);
    expect(r.problems[0]).toMatch(/Unable to determine the device handle/);
  });

  it("treats [N/A] as missing, not as an error", () => {
    const r = parseNvidiaSmiCsv("0, NVIDIA A100 80GB PCIe MIG 1g.10gb, GPU-x, 81920, 80000, 10, [N/A], 535.1, 00000000:01:00.0\n");
    expect(r.gpus[0]).toMatchObject({ healthy: true, utilizationPercent: null });
  });
});

describe("detectGpus", () => {
  it("uses every healthy GPU by default", async () => {
    const d = await detectGpus({ gpus: gpusConfig(), runner: recorded("8x-h200.txt"), graphics: null });
    expect(d.mode).toBe("gpu");
    expect(selectedGpus(d)).toHaveLength(8);
    expect(selectedGpus(d)[7]).toEqual({ index: 7, name: "NVIDIA H200", vram_total_mb: 143771, vram_free_mb: 143183 });
  });

  it("uses only the configured devices", async () => {
    const d = await detectGpus({ gpus: gpusConfig({ devices: [1, 3, 9] }), runner: recorded("8x-h200.txt"), graphics: null });
    expect(selectedGpus(d).map((g) => g.index)).toEqual([1, 3]);
    expect(d.problems).toContain("gpus.devices lists GPU 9, which was not detected");
  });

  it("skips a GPU in error and says why", async () => {
    const d = await detectGpus({ gpus: gpusConfig(), runner: recorded("gpu-in-error.txt"), graphics: null });
    expect(selectedGpus(d).map((g) => g.index)).toEqual([0]);
    expect(d.problems.some((p) => p.includes("GPU 1 is in error"))).toBe(true);
    expect(formatDetection(d)).toMatch(/error: GPU requires reset/);
  });

  it("runs as a CPU miner when the driver is not loaded, naming the failure", async () => {
    const d = await detectGpus({
      gpus: gpusConfig(),
      runner: recorded("no-driver.txt", 9),
      graphics: () => Promise.resolve([{ vendor: "NVIDIA Corporation", model: "AD102 [GeForce RTX 4090]", vram: null }]),
    });
    expect(d.mode).toBe("cpu");
    expect(d.gpus).toEqual([]);
    expect(d.problems[0]).toMatch(/exited with code 9: NVIDIA-SMI has failed/);
    expect(d.problems.some((p) => p.includes("driver loaded"))).toBe(true);
    expect(formatDetection(d)).toMatch(/mode: CPU miner/);
  });

  it("runs as a CPU miner when nvidia-smi is not installed", async () => {
    const d = await detectGpus({
      gpus: gpusConfig(),
      runner: notInstalled,
      graphics: () => Promise.resolve([{ vendor: "Intel Corporation", model: "UHD Graphics 630", vram: 1024 }]),
    });
    expect(d.mode).toBe("cpu");
    expect(d.others).toEqual([{ vendor: "Intel Corporation", model: "UHD Graphics 630", vramMb: 1024 }]);
    expect(d.problems[0]).toMatch(/not found/);
  });

  it("keeps the healthy rows when nvidia-smi exits non-zero for a lost GPU", async () => {
    const d = await detectGpus({ gpus: gpusConfig(), runner: recorded("gpu-lost.txt", 15), graphics: null });
    expect(selectedGpus(d).map((g) => g.name)).toEqual(["Tesla V100-SXM2-16GB"]);
    expect(d.problems[0]).toMatch(/code 15/);
  });

  it("applies overrides and declares GPUs detection missed", async () => {
    const d = await detectGpus({
      gpus: gpusConfig({
        overrides: [
          { index: 0, name: "RTX 4090 (lab)", vram_total_mb: 20000 },
          { index: 1, name: "NVIDIA L4", vram_total_mb: 23034 },
        ],
      }),
      runner: recorded("1x-rtx4090.txt"),
      graphics: null,
    });
    expect(selectedGpus(d)).toEqual([
      { index: 0, name: "RTX 4090 (lab)", vram_total_mb: 20000, vram_free_mb: 20000 },
      { index: 1, name: "NVIDIA L4", vram_total_mb: 23034, vram_free_mb: 23034 },
    ]);
  });

  it("mode cpu uses no GPU even when some are present", async () => {
    const d = await detectGpus({ gpus: gpusConfig({ mode: "cpu" }), runner: recorded("2x-a100-80gb.txt"), graphics: null });
    expect(d.mode).toBe("cpu");
    expect(selectedGpus(d)).toEqual([]);
  });
});

describe("detectGpus with a stalled systeminformation", () => {
  it("gives up on it after detect_timeout and still reports nvidia-smi's GPUs", async () => {
    const d = await detectGpus({
      gpus: gpusConfig({ detectTimeoutMs: 50 }),
      runner: recorded("1x-rtx4090.txt"),
      graphics: () => new Promise(() => undefined),
    });
    expect(selectedGpus(d).map((g) => g.name)).toEqual(["NVIDIA GeForce RTX 4090"]);
    expect(d.problems).toContain("systeminformation could not list graphics controllers");
  });
});
