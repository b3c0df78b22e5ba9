/**
 * `npm run bench:inference`: batch-1 decoding of gpt2-124m-random, our engine against
 * @xenova/transformers 2.17.2's text-generation pipeline, on the same prompts and lengths,
 * greedy. Each side runs in its own child process, never both at once (so they do not share
 * cores, and peak RSS is each side's own), alternating round by round so that load from other
 * processes falls on both alike. Prints medians, the ratio ours/theirs, and the memory-bandwidth
 * bound: weight bytes per token ÷ a measured copy bandwidth.
 *
 * Builds models/gpt2-124m-random when it is missing. Environment: BENCH_MODEL (default
 * gpt2-124m-random), BENCH_TOKENS (default 64), BENCH_REPEAT (rounds, default 3), BENCH_THREADS
 * (onnxruntime intra-op threads for ours, default 0 = one per CPU), BENCH_SPIN=0|1 (ours with
 * thread_spinning off or on; default "auto", the engine's default, decided from the load average).
 */
import { execFile } from "node:child_process";
import { existsSync, statSync } from "node:fs";
import { availableParallelism } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { Worker } from "node:worker_threads";
import { silentLogger } from "../src/common/logger.js";
import { buildModel } from "../src/inference/models/build-model.js";
import { RECIPES } from "../src/inference/models/recipes.js";
import { OnnxEngine } from "../src/inference/onnx-engine.js";
import { resolveThreadSpinning } from "../src/inference/session-factory.js";

const run = promisify(execFile);
const ROOT = path.resolve(import.meta.dirname, "..");
const MODELS_DIR = path.join(ROOT, "models");
const MODEL = process.env.BENCH_MODEL ?? "gpt2-124m-random";
const TOKENS = Number(process.env.BENCH_TOKENS ?? 64);
const REPEAT = Number(process.env.BENCH_REPEAT ?? 3);
const THREADS = Number(process.env.BENCH_THREADS ?? 0);
const SPIN: boolean | "auto" = process.env.BENCH_SPIN === "0" ? false : process.env.BENCH_SPIN === "1" ? true : "auto";
const PROMPTS = [
  "The history of the city begins in the early years of the",
  "In a shocking finding, scientists discovered a herd of unicorns living in a remote valley",
  "def fibonacci(n):\n    if n < 2:\n        return n\n",
];

interface SideResult {
  tokensPerSecond: number[];
  ttftMs: number[];
  rssPeakBytes: number;
  /** Whether ours ran with spinning intra-op threads (thread_spinning resolved at session creation). */
  spinning?: boolean;
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

/** Child mode: our engine, printing one JSON SideResult. */
async function oursChild(): Promise<void> {
  // Resolved here, as the engine would at session creation, so the report can say which it was.
  const spinning = resolveThreadSpinning(SPIN);
  const engine = new OnnxEngine(
    { executionProvider: "cpu", deviceIds: [], modelsDir: MODELS_DIR, models: [MODEL], intraOpThreads: THREADS, interOpThreads: 0, graphOptimizationLevel: "all", threadSpinning: spinning },
    { log: silentLogger() },
  );
  await engine.initialize();
  const params = { max_new_tokens: TOKENS, temperature: 0, top_k: 0, top_p: 1, repetition_penalty: 1, stop: [], seed: 0 };
  // One warm-up generation: onnxruntime allocates its arenas on the first runs.
  await engine.generate({ model: MODEL, prompt: PROMPTS[0]!, params: { ...params, max_new_tokens: 4 } });
  const out: SideResult = { tokensPerSecond: [], ttftMs: [], rssPeakBytes: 0 };
  for (const prompt of PROMPTS) {
    const res = await engine.generate({ model: MODEL, prompt, params });
    out.tokensPerSecond.push(res.timing.tokens_per_second);
    out.ttftMs.push(res.timing.time_to_first_token_ms);
  }
  await engine.close();
  out.rssPeakBytes = process.resourceUsage().maxRSS * 1024;
  out.spinning = spinning;
  process.stdout.write(`${JSON.stringify(out)}\n`);
}

async function theirs(): Promise<SideResult> {
  const script = path.join(ROOT, "test", "inference", "xenova-generate.mjs");
  const cases = PROMPTS.map((prompt) => ({ prompt, max_new_tokens: TOKENS }));
  // Warm-up is the first pass, dropped below, as ours drops its warm-up generation.
  const input = { modelsDir: MODELS_DIR, model: MODEL, cases, repeat: 2, ids: false };
  const { stdout } = await run(process.execPath, [script, JSON.stringify(input)], { maxBuffer: 64 << 20 });
  const parsed = JSON.parse(stdout) as { results: { ms: number; ttft_ms: number }[]; rss_peak_bytes: number };
  const results = parsed.results.slice(cases.length);
  return {
    // The pipeline does not stream: decode time is a full generation minus a one-token one.
    tokensPerSecond: results.map((r) => (TOKENS - 1) / ((r.ms - r.ttft_ms) / 1000)),
    ttftMs: results.map((r) => r.ttft_ms),
    rssPeakBytes: parsed.rss_peak_bytes,
  };
}

async function ours(): Promise<SideResult> {
  const { stdout } = await run(process.execPath, ["--import", "tsx", path.join(ROOT, "bench", "inference.ts"), "--child"], { maxBuffer: 16 << 20, env: process.env });
  return JSON.parse(stdout) as SideResult;
}

/**
 * Memory bandwidth from large buffer copies on every CPU at once (decoding uses them all),
 * counting bytes read plus bytes written as STREAM's copy does; best of three rounds.
 */
async function copyBandwidth(): Promise<number> {
  const threads = availableParallelism();
  const size = 128 << 20;
  const reps = 6;
  const code = `
    const { parentPort, workerData } = require("node:worker_threads");
    const a = Buffer.alloc(workerData.size, 1), b = Buffer.alloc(workerData.size);
    a.copy(b);
    parentPort.on("message", () => {
      const t = process.hrtime.bigint();
      for (let i = 0; i < workerData.reps; i++) a.copy(b);
      parentPort.postMessage(Number(process.hrtime.bigint() - t) / 1e9);
    });
    parentPort.postMessage("ready");`;
  const workers = Array.from({ length: threads }, () => new Worker(code, { eval: true, workerData: { size, reps } }));
  const next = (w: Worker): Promise<unknown> => new Promise((resolve) => w.once("message", resolve));
  await Promise.all(workers.map(next));
  let best = 0;
  for (let round = 0; round < 3; round++) {
    const done = workers.map(next);
    const t = process.hrtime.bigint();
    for (const w of workers) w.postMessage("go");
    await Promise.all(done);
    const seconds = Number(process.hrtime.bigint() - t) / 1e9;
    best = Math.max(best, (threads * reps * size * 2) / seconds);
  }
  await Promise.all(workers.map((w) => w.terminate()));
  return best;
}

async function main(): Promise<void> {
  const dir = path.join(MODELS_DIR, MODEL);
  if (!existsSync(path.join(dir, "onnx", "decoder_model_merged.onnx"))) {
    const recipe = RECIPES[MODEL];
    if (recipe === undefined) throw new Error(`${MODEL} is missing and has no recipe to build it`);
    process.stderr.write(`building ${MODEL} (once)…\n`);
    await buildModel(recipe, dir);
  }
  const weightBytes = statSync(path.join(dir, "onnx", "decoder_model_merged.onnx")).size;
  const bandwidth = await copyBandwidth();
  const bound = bandwidth / weightBytes;

  process.stderr.write(`model ${MODEL}: ${PROMPTS.length} prompts × ${REPEAT} rounds, ${TOKENS} new tokens, greedy, batch 1\n`);
  const a: SideResult = { tokensPerSecond: [], ttftMs: [], rssPeakBytes: 0 };
  const b: SideResult = { tokensPerSecond: [], ttftMs: [], rssPeakBytes: 0 };
  const spinModes = new Set<string>();
  const add = (into: SideResult, r: SideResult): void => {
    if (r.spinning !== undefined) spinModes.add(r.spinning ? "spin" : "no spin");
    into.tokensPerSecond.push(...r.tokensPerSecond);
    into.ttftMs.push(...r.ttftMs);
    into.rssPeakBytes = Math.max(into.rssPeakBytes, r.rssPeakBytes);
  };
  for (let round = 1; round <= REPEAT; round++) {
    process.stderr.write(`round ${round}/${REPEAT}: ours…`);
    add(a, await ours());
    process.stderr.write(" transformers.js…\n");
    add(b, await theirs());
  }

  const row = (name: string, r: SideResult): string =>
    `${name.padEnd(28)} ${median(r.tokensPerSecond).toFixed(1).padStart(10)} ${median(r.ttftMs).toFixed(1).padStart(12)} ${(r.rssPeakBytes / 2 ** 20).toFixed(0).padStart(14)}`;
  const lines = [
    `${"".padEnd(28)} ${"tokens/s".padStart(10)} ${"TTFT ms".padStart(12)} ${"peak RSS MiB".padStart(14)}   (medians)`,
    row(`ours (ORT 1.30, ${[...spinModes].join("/")})`, a),
    row("transformers.js 2.17.2", b),
    "",
    `decode speed ours/theirs:  ${(median(a.tokensPerSecond) / median(b.tokensPerSecond)).toFixed(2)}×  (target ≥ 1.3×)`,
    `TTFT ours/theirs:          ${(median(a.ttftMs) / median(b.ttftMs)).toFixed(2)}`,
    `copy bandwidth:            ${(bandwidth / 1e9).toFixed(1)} GB/s; weights ${(weightBytes / 1e6).toFixed(0)} MB per token`,
    `bandwidth bound:           ${bound.toFixed(1)} tokens/s; ours ${((100 * median(a.tokensPerSecond)) / bound).toFixed(0)}% of it (target ≥ 70%)`,
  ];
  process.stdout.write(`${lines.join("\n")}\n`);
}

if (process.argv.includes("--child")) await oursChild();
else await main();
