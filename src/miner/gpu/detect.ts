import { execFile } from "node:child_process";
import type { GpuInfo } from "../../protocol/frames.js";
import type { MinerConfig } from "../config.js";
import { NVIDIA_SMI_ARGS, parseNvidiaSmiCsv, type CommandRunner, type NvidiaGpu } from "./nvidia-smi.js";

/**
 * GPU detection: nvidia-smi is the source of truth for NVIDIA GPUs (what the CUDA provider
 * will see); systeminformation lists the other graphics controllers so `aitbc gpus` can say
 * why they are not used; config selects which GPUs to use and overrides what was detected.
 * With no usable GPU the miner runs as a CPU miner.
 */
export interface DetectedGpu extends GpuInfo {
  uuid?: string;
  driverVersion?: string;
  pciBusId?: string;
  utilizationPercent?: number | null;
  healthy: boolean;
  problem?: string;
  /** Whether the miner will use it (healthy and selected by config). */
  selected: boolean;
  /** Where the facts came from. */
  source: "nvidia-smi" | "config";
}

export interface OtherController {
  vendor: string;
  model: string;
  vramMb: number | null;
}

export interface GpuDetection {
  /** Every NVIDIA GPU found or declared, selected or not. */
  gpus: DetectedGpu[];
  /** Controllers nvidia-smi does not cover (integrated, other vendors); never used for inference. */
  others: OtherController[];
  /** Why detection found less than it might have (no driver, GPU in error, …). */
  problems: string[];
  /** "gpu" when at least one GPU is selected, else "cpu". */
  mode: "gpu" | "cpu";
}

/** The GPUs a miner announces in hello and hands the engine as device ids. */
export function selectedGpus(d: GpuDetection): GpuInfo[] {
  return d.gpus
    .filter((g) => g.selected)
    .map((g) => ({ index: g.index, name: g.name, vram_total_mb: g.vram_total_mb, vram_free_mb: g.vram_free_mb }));
}

export type GraphicsSource = () => Promise<{ vendor: string; model: string; vram: number | null }[]>;

export interface DetectOptions {
  gpus: MinerConfig["gpus"];
  runner?: CommandRunner;
  /** systeminformation's graphics controllers; injectable for tests. `null` skips it. */
  graphics?: GraphicsSource | null;
}

/** Runs a program with execFile (no shell) and a timeout. */
export const execRunner: CommandRunner = (command, args, { timeoutMs }) =>
  new Promise((resolve, reject) => {
    execFile(command, args, { timeout: timeoutMs, windowsHide: true, maxBuffer: 1024 * 1024 }, (err, stdout, stderr) => {
      if (err !== null && err.code === "ENOENT") {
        reject(Object.assign(new Error(err.message), { code: "ENOENT" }));
        return;
      }
      const code = err === null ? 0 : typeof err.code === "number" ? err.code : null;
      resolve({ code, stdout, stderr });
    });
  });

const systeminformationGraphics: GraphicsSource = async () => {
  const si = await import("systeminformation");
  const data = await si.default.graphics();
  return data.controllers.map((c) => ({ vendor: c.vendor, model: c.model, vram: c.vram }));
};

function isNvidia(vendor: string): boolean {
  return /nvidia/i.test(vendor);
}

function fromNvidia(g: NvidiaGpu): DetectedGpu {
  return {
    index: g.index,
    name: g.name,
    vram_total_mb: g.memoryTotalMb ?? 0,
    vram_free_mb: g.memoryFreeMb ?? 0,
    uuid: g.uuid,
    driverVersion: g.driverVersion,
    pciBusId: g.pciBusId,
    utilizationPercent: g.utilizationPercent,
    healthy: g.healthy,
    ...(g.problem === undefined ? {} : { problem: g.problem }),
    selected: false,
    source: "nvidia-smi",
  };
}

async function runNvidiaSmi(
  runner: CommandRunner,
  config: MinerConfig["gpus"],
  problems: string[],
): Promise<NvidiaGpu[]> {
  let result;
  try {
    result = await runner(config.nvidiaSmi, NVIDIA_SMI_ARGS, { timeoutMs: config.detectTimeoutMs });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    problems.push(code === "ENOENT" ? `${config.nvidiaSmi} not found (no NVIDIA driver installed)` : `${config.nvidiaSmi} could not run`);
    return [];
  }
  const report = parseNvidiaSmiCsv(result.stdout);
  if (result.code !== 0) {
    const first = (result.stdout + "\n" + result.stderr).split(/\r?\n/).find((l) => l.trim() !== "");
    problems.push(
      `${config.nvidiaSmi} exited with ${result.code === null ? "a signal or timeout" : `code ${result.code}`}${first === undefined ? "" : `: ${first.trim()}`}`,
    );
    // A failing nvidia-smi may still list some GPUs (one lost, others fine): keep those rows,
    // the message lines are already in the problem above.
    return report.gpus;
  }
  problems.push(...report.problems);
  return report.gpus;
}

export async function detectGpus(options: DetectOptions): Promise<GpuDetection> {
  const config = options.gpus;
  const problems: string[] = [];
  const nvidia =
    config.mode === "cpu" && config.overrides.length === 0
      ? []
      : await runNvidiaSmi(options.runner ?? execRunner, config, problems);

  let others: OtherController[] = [];
  const graphics = options.graphics === undefined ? systeminformationGraphics : options.graphics;
  if (graphics !== null) {
    try {
      // systeminformation shells out to lspci and friends; a wedged host must not stall start-up.
      let timer: NodeJS.Timeout | undefined;
      const controllers = await Promise.race([
        graphics(),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error("timeout")), config.detectTimeoutMs);
        }),
      ]).finally(() => clearTimeout(timer));
      others = controllers
        .filter((c) => !(isNvidia(c.vendor) && nvidia.length > 0))
        .map((c) => ({ vendor: c.vendor, model: c.model, vramMb: c.vram }));
      if (nvidia.length === 0 && controllers.some((c) => isNvidia(c.vendor))) {
        problems.push("an NVIDIA GPU is on the PCI bus but nvidia-smi lists none: is the driver loaded?");
      }
    } catch {
      problems.push("systeminformation could not list graphics controllers");
    }
  }

  const byIndex = new Map<number, DetectedGpu>(nvidia.map((g) => [g.index, fromNvidia(g)]));
  for (const o of config.overrides) {
    const found = byIndex.get(o.index);
    if (found) {
      if (o.name !== undefined) found.name = o.name;
      if (o.vram_total_mb !== undefined) found.vram_total_mb = o.vram_total_mb;
      if (o.vram_free_mb !== undefined) found.vram_free_mb = o.vram_free_mb;
      else if (o.vram_total_mb !== undefined) found.vram_free_mb = Math.min(found.vram_free_mb, o.vram_total_mb);
    } else {
      byIndex.set(o.index, {
        index: o.index,
        name: o.name ?? `GPU ${o.index}`,
        vram_total_mb: o.vram_total_mb ?? 0,
        vram_free_mb: o.vram_free_mb ?? o.vram_total_mb ?? 0,
        healthy: true,
        selected: false,
        source: "config",
      });
    }
  }

  const gpus = [...byIndex.values()].sort((a, b) => a.index - b.index);
  for (const g of gpus) {
    if (!g.healthy) problems.push(`GPU ${g.index} is in error: ${g.problem ?? "unknown"}`);
  }
  const wanted = new Set(config.devices);
  for (const d of config.devices) {
    if (!byIndex.has(d)) problems.push(`gpus.devices lists GPU ${d}, which was not detected`);
  }
  for (const g of gpus) {
    g.selected = config.mode !== "cpu" && g.healthy && (wanted.size === 0 || wanted.has(g.index));
  }
  return { gpus, others, problems, mode: gpus.some((g) => g.selected) ? "gpu" : "cpu" };
}
