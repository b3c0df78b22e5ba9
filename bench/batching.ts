/**
 * `npm run bench:batching`: what continuous batching buys a miner that runs several jobs at
 * once. For each concurrency C, C generations of gpt2-124m-random (64 new tokens each, greedy,
 * different prompts) are started together on one engine, once with inference.max_batch = C
 * (they share decode steps) and once with max_batch = 1 (one after another: the peer). Prints
 * the aggregate tokens/s of both, medians over rounds, and the ratio batched/one-at-a-time.
 * Each run is its own child process; the two sides alternate round by round.
 *
 * Environment: BENCH_MODEL (default gpt2-124m-random, built when missing; BENCH_MODEL=…-int8
 * for int8 weights), BENCH_TOKENS (default 64), BENCH_REPEAT (rounds, default 3),
 * BENCH_CONCURRENCY (comma list, default "2,4,8"), BENCH_SPIN=0|1 (thread_spinning; default the
 * engine's "auto", decided once before the first run).
 *
 * It also prints the concurrency a CPU miner serving that model would choose on this machine
 * when `[miner] max_concurrent` is left at 0 (src/miner/default-concurrency.ts), and why.
 */
import { execFile } from "node:child_process";
import path from "node:path";
import { promisify } from "node:util";
import { Value } from "@sinclair/typebox/value";
import { silentLogger } from "../src/common/logger.js";
import { OnnxEngine } from "../src/inference/onnx-engine.js";
import { compileMinerConfig, MinerConfigSchema, type MinerConfigRaw } from "../src/miner/config.js";
import { minerConcurrency } from "../src/miner/default-concurrency.js";
import { benchSpin, childEnv, ensureModel, median } from "./bench-support.js";

const run = promisify(execFile);
const ROOT = path.resolve(import.meta.dirname, "..");
const MODELS_DIR = path.join(ROOT, "models");
const MODEL = process.env.BENCH_MODEL ?? "gpt2-124m-random";
const TOKENS = Number(process.env.BENCH_TOKENS ?? 64);
const REPEAT = Number(process.env.BENCH_REPEAT ?? 3);
const CONCURRENCY = (process.env.BENCH_CONCURRENCY ?? "2,4,8").split(",").map(Number);
const PROMPTS = [
  "The history of the city begins in the early years of the",
  "In a shocking finding, scientists discovered a herd of unicorns",
  "def fibonacci(n):",
  "Once upon a time there was",
  "The results of the experiment show that",
  "My favourite recipe for bread needs",
  "The train left the station at",
  "Dear committee, I am writing to",
];

/** Child mode: C generations at once with the given max_batch; prints aggregate tokens/s. */
async function child(concurrency: number, maxBatch: number): Promise<void> {
  const engine = new OnnxEngine(
    { executionProvider: "cpu", deviceIds: [], modelsDir: MODELS_DIR, models: [MODEL], intraOpThreads: 0, interOpThreads: 0, graphOptimizationLevel: "all", threadSpinning: benchSpin(), maxBatch },
    { log: silentLogger() },
  );
  await engine.initialize();
  const params = { max_new_tokens: TOKENS, temperature: 0, top_k: 0, top_p: 1, repetition_penalty: 1, stop: [], seed: 0 };
  await engine.generate({ model: MODEL, prompt: PROMPTS[0]!, params: { ...params, max_new_tokens: 4 } });
  const started = performance.now();
  const results = await Promise.all(
    Array.from({ length: concurrency }, (_, i) => engine.generate({ model: MODEL, prompt: PROMPTS[i % PROMPTS.length]!, params })),
  );
  const seconds = (performance.now() - started) / 1000;
  await engine.close();
  const tokens = results.reduce((n, r) => n + r.usage.completion_tokens, 0);
  process.stdout.write(`${JSON.stringify({ tokensPerSecond: tokens / seconds })}\n`);
}

async function side(concurrency: number, maxBatch: number, env: NodeJS.ProcessEnv): Promise<number> {
  const args = ["--import", "tsx", path.join(ROOT, "bench", "batching.ts"), "--child", String(concurrency), String(maxBatch)];
  const { stdout } = await run(process.execPath, args, { maxBuffer: 1 << 20, env });
  return (JSON.parse(stdout) as { tokensPerSecond: number }).tokensPerSecond;
}

async function main(): Promise<void> {
  const env = await childEnv();
  await ensureModel(MODELS_DIR, MODEL);
  process.stderr.write(`model ${MODEL}: ${TOKENS} new tokens per generation, greedy, ${REPEAT} rounds\n`);
  const raw = Value.Default(MinerConfigSchema, {}) as MinerConfigRaw;
  raw.inference = { ...raw.inference, execution_provider: "cpu", models_dir: MODELS_DIR, models: [MODEL] };
  const chosen = minerConcurrency(compileMinerConfig(raw, undefined), []);
  const rows: string[] = [];
  for (const c of CONCURRENCY) {
    const batched: number[] = [];
    const serial: number[] = [];
    for (let round = 1; round <= REPEAT; round++) {
      process.stderr.write(`${c} at once, round ${round}/${REPEAT}: batched…`);
      batched.push(await side(c, c, env));
      process.stderr.write(" one at a time…\n");
      serial.push(await side(c, 1, env));
    }
    const ratio = median(batched) / median(serial);
    rows.push(`${String(c).padStart(11)} ${median(batched).toFixed(1).padStart(16)} ${median(serial).toFixed(1).padStart(16)} ${`${ratio.toFixed(2)}×`.padStart(16)}`);
  }
  process.stdout.write(
    [`aggregate tokens/s, ${MODEL} (medians)`, `${"generations".padStart(11)} ${"batched".padStart(16)} ${"one at a time".padStart(16)} ${"batched/one".padStart(16)}`, ...rows, "", `default concurrency of a CPU miner here ([miner] max_concurrent = 0): ${chosen.slots} (${chosen.reason})`].join("\n") + "\n",
  );
}

const at = process.argv.indexOf("--child");
if (at >= 0) await child(Number(process.argv[at + 1]), Number(process.argv[at + 2]));
else await main();
