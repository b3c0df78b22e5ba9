import { describe, expect, it } from "vitest";
import { loadCoordinatorConfig } from "../../src/coordinator/config.js";
import { estimateJob } from "../../src/coordinator/estimates.js";

const config = loadCoordinatorConfig(undefined, {
  optional: true,
  env: {},
  overrides: { "log.level": "silent", "estimates.default_tokens_per_second": 20, "estimates.overhead_seconds": 2 },
});
const job = { model: "m", maxNewTokens: 100, requirements: {} };

describe("estimateJob", () => {
  it("uses config alone when nothing was observed: overhead + max_new_tokens / tokens/s", () => {
    expect(estimateJob(config, job, { ahead: 0, slots: 2, busy: 0 }).estimatedTimeSeconds).toBe(7);
    // No miner connected: as if one slot.
    expect(estimateJob(config, job, { ahead: 0, slots: 0, busy: 0 }).estimatedTimeSeconds).toBe(7);
  });

  it("uses the observed speed, overhead and slot time instead of config", () => {
    const observed = { tokensPerSecond: 200, overheadSeconds: 0.25, jobSeconds: 0.8, samples: 5 };
    expect(estimateJob(config, job, { ahead: 0, slots: 1, busy: 0 }, observed).estimatedTimeSeconds).toBe(0.75);
    // Busy slot, 3 queued ahead: 4 jobs end (0.8 s each, one slot) before this one starts.
    expect(estimateJob(config, job, { ahead: 3, slots: 1, busy: 1 }, observed).estimatedTimeSeconds).toBe(3.95);
  });

  it("adds no wait while a slot is free, and drains the queue over every slot", () => {
    const q = (ahead: number, slots: number, busy: number): number => estimateJob(config, job, { ahead, slots, busy }).estimatedTimeSeconds;
    expect(q(2, 4, 1)).toBe(7);
    expect(q(0, 4, 4)).toBe(7 + 5 / 4);
    expect(q(7, 4, 4)).toBe(7 + (8 * 5) / 4);
    // Half the slots, all busy, the same queue: twice the wait.
    expect(q(5, 2, 2)).toBe(7 + (6 * 5) / 2);
    expect(q(7, 2, 2) - 7).toBe(2 * (q(7, 4, 4) - 7));
  });

  it("prices the GPU-hours of the observed run time when a GPU type is asked for", () => {
    const priced = loadCoordinatorConfig(undefined, {
      optional: true,
      env: {},
      overrides: { "log.level": "silent", "pricing.per_1k_tokens": { default: 0 }, "pricing.per_gpu_hour": { default: 3.6 } },
    });
    const gpuJob = { ...job, requirements: { gpu_type: "rtx 4090" } };
    // 100 tokens at 100 tokens/s = 1 s = 1/3600 h × 3.6 = 0.001.
    expect(estimateJob(priced, gpuJob, { ahead: 0, slots: 1, busy: 0 }, { tokensPerSecond: 100, overheadSeconds: 0, jobSeconds: 1, samples: 1 }).estimatedCost).toBe(0.001);
  });
});
