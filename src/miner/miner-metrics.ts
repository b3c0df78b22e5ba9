import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { Counter, Gauge, Registry, collectDefaultMetrics } from "prom-client";
import type { Logger } from "../common/logger.js";
import { NVIDIA_SMI_ARGS, parseNvidiaSmiCsv, type CommandRunner, type NvidiaGpu } from "./gpu/nvidia-smi.js";

export type JobOutcome = "completed" | "failed" | "cancelled" | "timed_out" | "released" | "dropped";

/**
 * Prometheus metrics of a miner, served on `[metrics] listen` (off by default): jobs by
 * outcome, tokens generated, decode speed of the last job, engine load time, jobs running,
 * and GPU utilisation/memory read from nvidia-smi at scrape time where it is present.
 */
export class MinerMetrics {
  readonly registry = new Registry();
  readonly jobs: Counter<"outcome">;
  readonly tokens: Counter;
  readonly tokensPerSecond: Gauge;
  readonly engineLoadSeconds: Gauge;
  private server: Server | undefined;

  constructor(sources: { running: () => number; nvidiaSmi?: { command: string; runner: CommandRunner } }) {
    collectDefaultMetrics({ register: this.registry, prefix: "aitbc_miner_" });
    this.jobs = new Counter({ name: "aitbc_miner_jobs_total", help: "Jobs this miner ended, by outcome", labelNames: ["outcome"], registers: [this.registry] });
    this.tokens = new Counter({ name: "aitbc_miner_tokens_generated_total", help: "Completion tokens generated", registers: [this.registry] });
    this.tokensPerSecond = new Gauge({ name: "aitbc_miner_tokens_per_second", help: "Decode speed of the last completed job", registers: [this.registry] });
    this.engineLoadSeconds = new Gauge({ name: "aitbc_miner_engine_load_seconds", help: "Time the engine took to load its models", registers: [this.registry] });
    new Gauge({
      name: "aitbc_miner_jobs_running",
      help: "Jobs running now",
      registers: [this.registry],
      collect() {
        this.set(sources.running());
      },
    });
    const smi = sources.nvidiaSmi;
    if (smi !== undefined) {
      // One nvidia-smi call per scrape feeds both gauges (the registry collects them concurrently).
      let last: { at: number; gpus: Promise<NvidiaGpu[]> } | undefined;
      const read = (): Promise<NvidiaGpu[]> => {
        const now = Date.now();
        if (last === undefined || now - last.at > 1_000) {
          last = {
            at: now,
            gpus: smi
              .runner(smi.command, NVIDIA_SMI_ARGS, { timeoutMs: 5_000 })
              .then((r) => (r.code === 0 ? parseNvidiaSmiCsv(r.stdout).gpus : []))
              .catch(() => []), // no nvidia-smi: no GPU series
          };
        }
        return last.gpus;
      };
      const gpuGauge = (name: string, help: string, pick: (g: NvidiaGpu) => number | null): void => {
        new Gauge({
          name,
          help,
          labelNames: ["index", "name"],
          registers: [this.registry],
          async collect() {
            this.reset();
            for (const g of await read()) {
              const v = pick(g);
              if (v !== null) this.set({ index: String(g.index), name: g.name }, v);
            }
          },
        });
      };
      gpuGauge("aitbc_miner_gpu_utilization_ratio", "GPU utilisation (nvidia-smi), 0–1", (g) =>
        g.utilizationPercent === null ? null : g.utilizationPercent / 100,
      );
      gpuGauge("aitbc_miner_gpu_memory_used_bytes", "GPU memory in use (nvidia-smi)", (g) =>
        g.memoryUsedMb === null ? null : g.memoryUsedMb * 1024 * 1024,
      );
    }
  }

  jobEnded(outcome: JobOutcome, tokens: number, tokensPerSecond?: number): void {
    this.jobs.inc({ outcome });
    if (tokens > 0) this.tokens.inc(tokens);
    if (tokensPerSecond !== undefined) this.tokensPerSecond.set(tokensPerSecond);
  }

  /** Serves GET /metrics on host:port; resolves with the bound address. */
  async listen(hostPort: string, log: Logger): Promise<string> {
    const m = /^(.*):(\d+)$/.exec(hostPort);
    if (m === null) throw new Error(`[metrics] listen must be host:port, not "${hostPort}"`);
    this.server = createServer((req, res) => {
      if (req.method === "GET" && req.url === "/metrics") {
        this.registry
          .metrics()
          .then((body) => res.writeHead(200, { "Content-Type": this.registry.contentType }).end(body))
          .catch((err: unknown) => res.writeHead(500).end(String(err)));
        return;
      }
      res.writeHead(404, { "Content-Type": "text/plain" }).end("not found\n");
    });
    const server = this.server;
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(Number(m[2]), m[1], () => resolve());
    });
    const a = server.address() as AddressInfo;
    const url = `http://${a.address}:${a.port}/metrics`;
    log.info({ url }, "miner metrics listening");
    return url;
  }

  async close(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    if (server !== undefined) await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}
