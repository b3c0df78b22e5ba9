/**
 * nvidia-smi is the source of truth for NVIDIA GPUs: it reports what the driver sees (name,
 * VRAM, driver version, CUDA index), which is what onnxruntime's CUDA provider will use.
 * This module only parses its CSV; running it goes through an injectable {@link CommandRunner}
 * so tests feed recorded output from test/fixtures/nvidia-smi/.
 */
export const NVIDIA_SMI_FIELDS = [
  "index",
  "name",
  "uuid",
  "memory.total",
  "memory.free",
  "memory.used",
  "utilization.gpu",
  "driver_version",
  "pci.bus_id",
] as const;

export const NVIDIA_SMI_ARGS = [`--query-gpu=${NVIDIA_SMI_FIELDS.join(",")}`, "--format=csv,noheader,nounits"];

export interface CommandResult {
  /** Exit code; null when killed by a signal or the timeout. */
  code: number | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs a program without a shell. Rejects with an error whose `code` is "ENOENT" when the
 * program is not installed.
 */
export type CommandRunner = (command: string, args: string[], options: { timeoutMs: number }) => Promise<CommandResult>;

export interface NvidiaGpu {
  index: number;
  name: string;
  uuid: string;
  /** MiB as nvidia-smi reports with nounits; null when the field could not be read. */
  memoryTotalMb: number | null;
  memoryFreeMb: number | null;
  memoryUsedMb: number | null;
  /** Percent; null when not available (e.g. MIG mode) or unreadable. */
  utilizationPercent: number | null;
  driverVersion: string;
  pciBusId: string;
  /** False when a field reads "[GPU requires reset]", "[Unknown Error]" or similar. */
  healthy: boolean;
  /** Why it is unhealthy, as nvidia-smi put it. */
  problem?: string;
}

export interface NvidiaSmiReport {
  gpus: NvidiaGpu[];
  /** Lines that were not GPU rows (e.g. "Unable to determine the device handle …"). */
  problems: string[];
}

/** nvidia-smi writes "[N/A]" / "[Not Supported]" for fields a GPU does not have: not an error. */
const NOT_AVAILABLE = /^\[(N\/A|Not Supported)\]$/i;
/** Any other bracketed value means the driver could not read the GPU. */
const BRACKETED = /^\[(.+)\]$/;

function parseNumber(raw: string, problems: string[]): number | null {
  if (NOT_AVAILABLE.test(raw)) return null;
  const bad = BRACKETED.exec(raw);
  if (bad) {
    problems.push(bad[1]!);
    return null;
  }
  const n = Number(raw);
  if (raw === "" || !Number.isFinite(n)) {
    problems.push(`unreadable value "${raw}"`);
    return null;
  }
  return n;
}

function parseText(raw: string, problems: string[]): string {
  const bad = BRACKETED.exec(raw);
  if (bad && !NOT_AVAILABLE.test(raw)) problems.push(bad[1]!);
  return raw;
}

/** Parses `nvidia-smi --query-gpu=<NVIDIA_SMI_FIELDS> --format=csv,noheader,nounits` output. */
export function parseNvidiaSmiCsv(text: string): NvidiaSmiReport {
  const gpus: NvidiaGpu[] = [];
  const problems: string[] = [];
  for (const rawLine of text.split(/\r?\n/)) {
    const line = rawLine.trim();
    if (line === "") continue;
    const fields = line.split(",").map((f) => f.trim());
    // GPU names contain no commas; anything else with a different shape is a message.
    if (fields.length !== NVIDIA_SMI_FIELDS.length || !/^\d+$/.test(fields[0]!)) {
      problems.push(line);
      continue;
    }
    const [index, name, uuid, total, free, used, util, driver, bus] = fields as [
      string,
      string,
      string,
      string,
      string,
      string,
      string,
      string,
      string,
    ];
    const gpuProblems: string[] = [];
    const gpu: NvidiaGpu = {
      index: Number(index),
      name: parseText(name, gpuProblems),
      uuid: parseText(uuid, gpuProblems),
      memoryTotalMb: parseNumber(total, gpuProblems),
      memoryFreeMb: parseNumber(free, gpuProblems),
      memoryUsedMb: parseNumber(used, gpuProblems),
      utilizationPercent: parseNumber(util, gpuProblems),
      driverVersion: parseText(driver, gpuProblems),
      pciBusId: parseText(bus, gpuProblems),
      healthy: true,
    };
    // A GPU without a readable total memory cannot be scheduled by VRAM either.
    if (gpu.memoryTotalMb === null && gpuProblems.length === 0) gpuProblems.push("memory.total not available");
    if (gpuProblems.length > 0) {
      gpu.healthy = false;
      gpu.problem = [...new Set(gpuProblems)].join("; ");
    }
    gpus.push(gpu);
  }
  return { gpus, problems };
}
