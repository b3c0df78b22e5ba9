import type { GpuInfo, GpuLoad, HelloFrame } from "../../protocol/frames.js";
import type { CoordinatorConfig } from "../config.js";

/**
 * What a miner says about itself is untrusted (DESIGN.md §9): before it reaches matching,
 * estimates or clients it is clamped to what a real machine could have. Each clamp is reported
 * so the gateway can log it.
 */
export interface Clamped<T> {
  value: T;
  /** What was clamped, e.g. "slots 4096 → 64"; empty when nothing was. */
  notes: string[];
}

type Limits = Pick<CoordinatorConfig["gateway"], "maxSlots" | "maxGpuVramMb" | "maxTokensPerSecond">;

export function clampHello(hello: HelloFrame, limits: Limits): Clamped<{ gpus: GpuInfo[]; slots: number }> {
  const notes: string[] = [];
  const gpus = hello.gpus.map((g) => {
    const total = Math.min(g.vram_total_mb, limits.maxGpuVramMb);
    const free = Math.min(g.vram_free_mb, total);
    if (total !== g.vram_total_mb) notes.push(`gpu ${g.index} vram_total_mb ${g.vram_total_mb} → ${total}`);
    if (free !== g.vram_free_mb && g.vram_free_mb <= limits.maxGpuVramMb) notes.push(`gpu ${g.index} vram_free_mb ${g.vram_free_mb} → ${free}`);
    return { ...g, vram_total_mb: total, vram_free_mb: free };
  });
  const slots = Math.min(hello.slots, limits.maxSlots);
  if (slots !== hello.slots) notes.push(`slots ${hello.slots} → ${slots}`);
  return { value: { gpus, slots }, notes };
}

/** A progress frame's figures against the job it is for: tokens at most max_new_tokens, speed at most the configured maximum. */
export function clampProgress(
  p: { tokens: number; tokens_per_s: number },
  maxTokens: number,
  limits: Pick<Limits, "maxTokensPerSecond">,
): { tokens: number; tokensPerSecond: number } {
  return { tokens: Math.min(p.tokens, maxTokens), tokensPerSecond: Math.min(p.tokens_per_s, limits.maxTokensPerSecond) };
}

/** The load of GPUs the hello declared, once each, free VRAM no more than the GPU has (figures a miner sends are untrusted). */
export function plausibleLoad(gpus: readonly GpuInfo[], load: readonly GpuLoad[]): GpuLoad[] {
  const byIndex = new Map(gpus.map((g) => [g.index, g]));
  const out = new Map<number, GpuLoad>();
  for (const l of load) {
    const g = byIndex.get(l.index);
    if (g === undefined || out.has(l.index)) continue;
    out.set(l.index, { index: l.index, utilization_percent: Math.round(l.utilization_percent * 10) / 10, vram_free_mb: Math.min(l.vram_free_mb, g.vram_total_mb) });
  }
  return [...out.values()];
}
