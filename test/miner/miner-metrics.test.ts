import { readFileSync } from "node:fs";
import { afterEach, describe, expect, it } from "vitest";
import { silentLogger } from "../../src/common/logger.js";
import { MinerMetrics } from "../../src/miner/miner-metrics.js";
import type { CommandRunner } from "../../src/miner/gpu/nvidia-smi.js";

function value(text: string, series: string): number | undefined {
  const line = text.split("\n").find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

describe("miner metrics", () => {
  let metrics: MinerMetrics | undefined;
  afterEach(async () => {
    await metrics?.close();
  });

  it("serves job outcomes, tokens, speed, load time, running jobs and nvidia-smi GPU figures on /metrics", async () => {
    const recorded = readFileSync("test/fixtures/nvidia-smi/2x-a100-80gb.txt", "utf8");
    const runner: CommandRunner = () => Promise.resolve({ code: 0, stdout: recorded, stderr: "" });
    metrics = new MinerMetrics({ running: () => 1, nvidiaSmi: { command: "nvidia-smi", runner } });
    metrics.jobEnded("completed", 120, 48.5);
    metrics.jobEnded("completed", 30, 60);
    metrics.jobEnded("cancelled", 0);
    metrics.engineLoadSeconds.set(1.25);
    const url = await metrics.listen("127.0.0.1:0", silentLogger());

    const res = await fetch(url);
    expect(res.status).toBe(200);
    const text = await res.text();
    expect(value(text, 'aitbc_miner_jobs_total{outcome="completed"}')).toBe(2);
    expect(value(text, 'aitbc_miner_jobs_total{outcome="cancelled"}')).toBe(1);
    expect(value(text, "aitbc_miner_tokens_generated_total")).toBe(150);
    expect(value(text, "aitbc_miner_tokens_per_second")).toBe(60);
    expect(value(text, "aitbc_miner_engine_load_seconds")).toBe(1.25);
    expect(value(text, "aitbc_miner_jobs_running")).toBe(1);
    expect(value(text, 'aitbc_miner_gpu_utilization_ratio{index="1",name="NVIDIA A100-SXM4-80GB"}')).toBe(0.87);
    expect(value(text, 'aitbc_miner_gpu_memory_used_bytes{index="1",name="NVIDIA A100-SXM4-80GB"}')).toBe(39840 * 1024 * 1024);
    expect((await fetch(url.replace("/metrics", "/other"))).status).toBe(404);
  });

  it("has no GPU series on a CPU host and survives a missing nvidia-smi", async () => {
    const missing: CommandRunner = () => Promise.reject(Object.assign(new Error("spawn nvidia-smi ENOENT"), { code: "ENOENT" }));
    metrics = new MinerMetrics({ running: () => 0, nvidiaSmi: { command: "nvidia-smi", runner: missing } });
    const text = await metrics.registry.metrics();
    expect(text).not.toMatch(/^aitbc_miner_gpu_memory_used_bytes\{/m);
    expect(value(text, "aitbc_miner_jobs_running")).toBe(0);
  });
});
