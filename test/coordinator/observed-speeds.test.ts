import { describe, expect, it } from "vitest";
import { ObservedSpeeds, type SpeedSample } from "../../src/coordinator/observed-speeds.js";

const T0 = 1_700_000_000_000;

function sample(over: Partial<SpeedSample> = {}): SpeedSample {
  return { model: "m", gpu: "NVIDIA GeForce RTX 4090", tokensPerSecond: 100, tokens: 100, jobSeconds: 1.5, at: T0, ...over };
}

describe("ObservedSpeeds", () => {
  it("knows nothing before a result, then takes the first one as it is", () => {
    const s = new ObservedSpeeds();
    expect(s.speed("m", undefined, T0)).toBeUndefined();
    s.observe(sample());
    // 100 tokens at 100 tokens/s is 1 s of decoding: the other 0.5 s of the slot is overhead.
    expect(s.speed("m", undefined, T0)).toEqual({ tokensPerSecond: 100, overheadSeconds: 0.5, jobSeconds: 1.5, samples: 1 });
    expect(s.speed("other", undefined, T0)).toBeUndefined();
  });

  it("moves each mean by the weight per result, toward a new speed", () => {
    const s = new ObservedSpeeds({ weight: 0.5 });
    s.observe(sample({ tokensPerSecond: 100 }));
    s.observe(sample({ tokensPerSecond: 200, at: T0 + 1 }));
    expect(s.speed("m", undefined, T0 + 1)?.tokensPerSecond).toBe(150);
    for (let i = 2; i < 20; i++) s.observe(sample({ tokensPerSecond: 200, at: T0 + i }));
    expect(s.speed("m", undefined, T0 + 20)?.tokensPerSecond).toBeCloseTo(200, 3);
  });

  it("keeps GPU types apart when a job asks for one, and mixes them when it does not", () => {
    const s = new ObservedSpeeds({ weight: 1 });
    s.observe(sample({ gpu: "NVIDIA GeForce RTX 4090", tokensPerSecond: 300, tokens: 300 }));
    s.observe(sample({ gpu: "Tesla V100-SXM2-16GB", tokensPerSecond: 100, tokens: 100 }));
    expect(s.speed("m", "rtx 4090", T0)?.tokensPerSecond).toBe(300);
    expect(s.speed("m", "v100", T0)?.tokensPerSecond).toBe(100);
    expect(s.speed("m", "a100", T0)).toBeUndefined();
    // weight 1: the latest result over all GPU types.
    expect(s.speed("m", undefined, T0)?.tokensPerSecond).toBe(100);
  });

  it("forgets a mean not refreshed within maxAgeMs, and restarts it from the next result", () => {
    const s = new ObservedSpeeds({ weight: 0.2, maxAgeMs: 60_000 });
    s.observe(sample({ tokensPerSecond: 100 }));
    expect(s.speed("m", undefined, T0 + 60_000)).toBeDefined();
    expect(s.speed("m", undefined, T0 + 60_001)).toBeUndefined();
    s.observe(sample({ tokensPerSecond: 40, at: T0 + 120_000 }));
    expect(s.speed("m", undefined, T0 + 120_000)).toMatchObject({ tokensPerSecond: 40, samples: 1 });
  });

  it("ignores results that say nothing about speed (no tokens, zero or non-finite speed)", () => {
    const s = new ObservedSpeeds();
    s.observe(sample({ tokens: 0 }));
    s.observe(sample({ tokensPerSecond: 0 }));
    s.observe(sample({ tokensPerSecond: Number.POSITIVE_INFINITY }));
    expect(s.speed("m", undefined, T0)).toBeUndefined();
  });

  it("counts CPU miners under their own key, never as a requested GPU type", () => {
    const s = new ObservedSpeeds();
    s.observe(sample({ gpu: null, tokensPerSecond: 30, tokens: 30 }));
    expect(s.speed("m", undefined, T0)?.tokensPerSecond).toBe(30);
    expect(s.speed("m", "cpu", T0)).toBeUndefined();
  });
});
