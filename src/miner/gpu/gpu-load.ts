import type { GpuLoad } from "../../protocol/frames.js";
import type { Logger } from "../../common/logger.js";
import { errorMessage } from "../../common/errors.js";
import { NVIDIA_SMI_ARGS, parseNvidiaSmiCsv, type CommandRunner } from "./nvidia-smi.js";

/** How often the load is read (a heartbeat carries the latest reading). */
export const GPU_LOAD_INTERVAL_MS = 10_000;
const NVIDIA_SMI_TIMEOUT_MS = 5_000;

/**
 * Reads the utilisation and free VRAM of the GPUs a miner uses from nvidia-smi, every
 * GPU_LOAD_INTERVAL_MS, for its heartbeats (the operators' fleet view). A GPU whose fields
 * cannot be read is left out; a failing nvidia-smi leaves no reading (and one warning).
 */
export class GpuLoadSampler {
  private latest: GpuLoad[] = [];
  private timer: NodeJS.Timeout | undefined;
  private warned = false;

  constructor(
    private readonly o: { command: string; runner: CommandRunner; indices: readonly number[]; log: Logger; intervalMs?: number },
  ) {}

  /** The latest reading (empty before the first, or when nvidia-smi fails). */
  get current(): GpuLoad[] {
    return this.latest;
  }

  start(): void {
    if (this.timer !== undefined || this.o.indices.length === 0) return;
    void this.sample();
    this.timer = setInterval(() => void this.sample(), this.o.intervalMs ?? GPU_LOAD_INTERVAL_MS);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }

  async sample(): Promise<GpuLoad[]> {
    const wanted = new Set(this.o.indices);
    try {
      const r = await this.o.runner(this.o.command, NVIDIA_SMI_ARGS, { timeoutMs: NVIDIA_SMI_TIMEOUT_MS });
      if (r.code !== 0) throw new Error(`nvidia-smi exited ${r.code ?? "on a signal"}`);
      this.latest = parseNvidiaSmiCsv(r.stdout)
        .gpus.filter((g) => wanted.has(g.index) && g.healthy && g.utilizationPercent !== null && g.memoryFreeMb !== null)
        .map((g) => ({ index: g.index, utilization_percent: Math.min(100, Math.max(0, g.utilizationPercent!)), vram_free_mb: Math.max(0, Math.round(g.memoryFreeMb!)) }));
    } catch (err) {
      this.latest = [];
      if (!this.warned) this.o.log.warn({ err: errorMessage(err) }, "cannot read GPU load from nvidia-smi: heartbeats go without it");
      this.warned = true;
    }
    return this.latest;
  }
}
