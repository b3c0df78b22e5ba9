/**
 * `npm run bench:inference`: decoding gpt2-124m-random on the CPU, our engine against peers on
 * the same weights, greedy:
 * - llama.cpp (node-llama-cpp 3.21.1) on GGUF conversions of our float32 export (F32, and
 *   Q8_0 against our int8 twin gpt2-124m-random-int8, MatMulNBits), fed our tokenizer's ids;
 * - @xenova/transformers 2.17.2's text-generation pipeline and @huggingface/transformers 4.3.2's
 *   generate() on our float32 folder (both run our graph as it is).
 *
 * Sections (BENCH_SECTIONS, a comma list, default all):
 * - batch1: one generation at a time, decode tokens/s and TTFT, and the memory-bandwidth bound;
 * - batch8: 8 generations started together, aggregate tokens/s: ours batched (BatchDecoder,
 *   inference.max_batch = 8) against llama.cpp's multi-sequence decoding (one context with 8
 *   sequences, all decoding concurrently, so that node-llama-cpp batches their steps);
 * - accuracy: int8 against float32 on the same prompts, for ours (int8 vs float32) and for
 *   llama.cpp (Q8_0 vs F32): how many leading greedy tokens agree, and the mean KL divergence
 *   KL(float32 ‖ 8-bit) of the next-token distributions, teacher-forced on the float32
 *   continuation (BENCH_ACCURACY_TOKENS per prompt, default 96), on the first
 *   BENCH_ACCURACY_PROMPTS (default all 32: 3,072 positions) of ACCURACY_PROMPT_SET (the batch8
 *   section's 8 prompts, the first 3 of them the decode prompts, then 24 more). Where each
 *   parts rests on the first near-tie it meets, so a leading count over a few prompts is mostly
 *   luck: the sums and medians over many are the figures to compare. BENCH_MODEL_INT8 names
 *   another int8 folder under models/ to compare (default gpt2-124m-random-int8).
 *
 * Before any timing the bench checks the conversion: llama.cpp F32, teacher-forced on our
 * float32 greedy continuation (BENCH_TOKENS, at least 16 tokens per prompt), must pick our
 * token at every position, except where both engines' two best tokens lie within TIE_MARGIN
 * of each other (rounding on near-tied logits, not a wrong conversion); otherwise it prints
 * where they part, with both top-2 log-probabilities and the largest difference over the
 * vocabulary, and exits 1 without timing anything. It also prints how many tokens free-running
 * greedy decoding of the two agrees on.
 *
 * Every engine gets the same intra-op threads (BENCH_THREADS, default one per CPU); every side
 * runs in its own child process, never two at once, alternating round by round so that load
 * from other processes falls on all alike. Medians over BENCH_REPEAT rounds (default 5);
 * BENCH_TOKENS new tokens per generation (default 64); BENCH_SPIN=0|1 for our intra-op threads
 * (default "auto", decided once before the first side runs).
 */
import { execFile } from "node:child_process";
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { availableParallelism, loadavg, tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { silentLogger } from "../src/common/logger.js";
import { gpt2WeightBytesPerToken, type WeightFormat } from "../src/inference/models/gpt2-graph.js";
import { loadModelInfo } from "../src/inference/models/model-info.js";
import { OnnxEngine } from "../src/inference/onnx-engine.js";
import { decideThreadSpinning } from "../src/inference/session-factory.js";
import { Tokenizer } from "../src/inference/tokenizer.js";
import { benchSpin, childEnv, DECODE_PROMPTS, ensureModel, median } from "./bench-support.js";
import { argmax, klDivergence, logSoftmax, maxAbsDiff, top2 } from "./distributions.js";
import { ensureGguf } from "./gguf-export.js";
import { createLlamaContext, llamaGreedy, llamaTeacherForced, loadLlamaModel, startLlama } from "./llama-peer.js";
import { copyBandwidth, readBandwidth } from "./memory-bandwidth.js";
import { OrtSteps } from "./ort-steps.js";

const run = promisify(execFile);
const ROOT = path.resolve(import.meta.dirname, "..");
const MODELS_DIR = path.join(ROOT, "models");
const MODEL = process.env.BENCH_MODEL ?? "gpt2-124m-random";
const MODEL_INT8 = process.env.BENCH_MODEL_INT8 ?? `${MODEL}-int8`;
const TOKENS = Number(process.env.BENCH_TOKENS ?? 64);
const CHECK_TOKENS = Math.max(16, TOKENS);
const ACCURACY_TOKENS = Number(process.env.BENCH_ACCURACY_TOKENS ?? 96);
const REPEAT = Number(process.env.BENCH_REPEAT ?? 5);
const THREADS = Number(process.env.BENCH_THREADS ?? 0) > 0 ? Number(process.env.BENCH_THREADS) : availableParallelism();
const SECTIONS = new Set((process.env.BENCH_SECTIONS ?? "batch1,batch8,accuracy").split(",").map((s) => s.trim()));
const CONCURRENT = 8;

/**
 * Where the conversion check accepts a different top-1 token: both engines' top two tokens
 * within this many nats (a log-probability difference, which is a logit difference). With a
 * right conversion the two engines' next-token log-probabilities differ by at most ~7e-3
 * anywhere in the vocabulary on these random weights (measured; the check prints the figure
 * each run), so a top-1 flip needs a gap under ~1.4e-2; a wrong conversion differs by whole
 * nats everywhere.
 */
const TIE_MARGIN = 2e-2;

/** The batch8 section's prompts, one per generation. */
const BATCH_PROMPTS = [
  ...DECODE_PROMPTS,
  "Once upon a time there was",
  "The results of the experiment show that",
  "My favourite recipe for bread needs",
  "The train left the station at",
  "Dear committee, I am writing to",
];

/**
 * The accuracy section's prompts: the batch8 prompts, then 24 written before any of them was
 * measured (none is dropped or picked by its result).
 */
const ACCURACY_PROMPT_SET = [
  ...BATCH_PROMPTS,
  "The weather today is",
  "According to the latest report, the company",
  "She opened the door and saw",
  "import numpy as np\nimport",
  "The best way to learn a language is",
  "In 1492, Columbus",
  "The meeting was postponed because",
  "Here is a list of things to do:",
  "The mountain village was quiet until",
  "To install the package, run",
  "Breaking news: the city council voted",
  "My grandmother always told me that",
  "The function returns a value when",
  "During the second world war, the",
  "Scientists have long wondered why",
  "The recipe calls for two cups of",
  "At the edge of the forest stood",
  "The stock market fell sharply after",
  "He picked up the phone and said",
  "The main character of the novel is",
  "Water boils at a temperature of",
  "The team scored in the final minute",
  "Our hotel room overlooked the",
  "The old map showed a path leading to",
];

const ACCURACY_PROMPTS = Math.min(ACCURACY_PROMPT_SET.length, Math.max(1, Number(process.env.BENCH_ACCURACY_PROMPTS ?? ACCURACY_PROMPT_SET.length)));

interface SideResult {
  tokensPerSecond: number[];
  ttftMs: number[];
  rssPeakBytes: number;
  /** Whether ours ran with spinning intra-op threads. */
  spinning?: boolean[];
}

const GREEDY = { temperature: 0, top_k: 0, top_p: 1, repetition_penalty: 1, stop: [], seed: 0 };

function oursEngine(model: string, spinning: boolean, maxBatch: number): OnnxEngine {
  return new OnnxEngine(
    { executionProvider: "cpu", deviceIds: [], modelsDir: MODELS_DIR, models: [model], intraOpThreads: THREADS, interOpThreads: 0, graphOptimizationLevel: "all", threadSpinning: spinning, maxBatch },
    { log: silentLogger() },
  );
}

function rssPeak(): number {
  return process.resourceUsage().maxRSS * 1024;
}

// ---------------------------------------------------------------- child processes
// Each prints one JSON line, its last line of stdout.

/** Ours, batch 1: each prompt in turn after a warm-up generation (onnxruntime allocates its arenas on the first runs). */
async function oursBatch1(model: string): Promise<SideResult> {
  const { spinning } = await decideThreadSpinning(benchSpin());
  const engine = oursEngine(model, spinning, 1);
  await engine.initialize();
  await engine.generate({ model, prompt: DECODE_PROMPTS[0]!, params: { ...GREEDY, max_new_tokens: 4 } });
  const out: SideResult = { tokensPerSecond: [], ttftMs: [], rssPeakBytes: 0, spinning: [spinning] };
  for (const prompt of DECODE_PROMPTS) {
    const res = await engine.generate({ model, prompt, params: { ...GREEDY, max_new_tokens: TOKENS } });
    out.tokensPerSecond.push(res.timing.tokens_per_second);
    out.ttftMs.push(res.timing.time_to_first_token_ms);
  }
  await engine.close();
  out.rssPeakBytes = rssPeak();
  return out;
}

/** Ours, 8 generations at once sharing decode steps; aggregate tokens/s from start to the last one's end. */
async function oursBatch8(model: string): Promise<number> {
  const { spinning } = await decideThreadSpinning(benchSpin());
  const engine = oursEngine(model, spinning, CONCURRENT);
  await engine.initialize();
  await engine.generate({ model, prompt: DECODE_PROMPTS[0]!, params: { ...GREEDY, max_new_tokens: 4 } });
  const started = performance.now();
  const results = await Promise.all(BATCH_PROMPTS.map((prompt) => engine.generate({ model, prompt, params: { ...GREEDY, max_new_tokens: TOKENS } })));
  const seconds = (performance.now() - started) / 1000;
  await engine.close();
  return results.reduce((n, r) => n + r.usage.completion_tokens, 0) / seconds;
}

async function llamaBatch1(file: string, prompts: number[][]): Promise<SideResult> {
  const llama = await startLlama(THREADS);
  const model = await loadLlamaModel(llama, file);
  const context = await createLlamaContext(model, THREADS, 1, 512);
  const sequence = context.getSequence();
  await llamaGreedy(sequence, prompts[0]!, 4);
  const out: SideResult = { tokensPerSecond: [], ttftMs: [], rssPeakBytes: 0 };
  for (const prompt of prompts) {
    const r = await llamaGreedy(sequence, prompt, TOKENS);
    out.tokensPerSecond.push(r.decodeTokensPerSecond);
    out.ttftMs.push(r.ttftMs);
  }
  await context.dispose();
  await model.dispose();
  await llama.dispose();
  out.rssPeakBytes = rssPeak();
  return out;
}

/** llama.cpp, 8 sequences of one context decoding concurrently; node-llama-cpp batches their pending tokens into one decode. */
async function llamaBatch8(file: string, prompts: number[][]): Promise<number> {
  const llama = await startLlama(THREADS);
  const model = await loadLlamaModel(llama, file);
  const context = await createLlamaContext(model, THREADS, prompts.length, 1024);
  const sequences = prompts.map(() => context.getSequence());
  await llamaGreedy(sequences[0]!, prompts[0]!, 4);
  const started = performance.now();
  const runs = await Promise.all(prompts.map((prompt, i) => llamaGreedy(sequences[i]!, prompt, TOKENS)));
  const seconds = (performance.now() - started) / 1000;
  await context.dispose();
  await model.dispose();
  await llama.dispose();
  return runs.reduce((n, r) => n + r.ids.length, 0) / seconds;
}

/** Greedy decoding with the full distribution at every step: `count` tokens and their `count` distributions. */
async function oursGreedyDists(steps: OrtSteps, prompt: number[], count: number): Promise<{ ids: number[]; dists: Float32Array[] }> {
  steps.reset();
  const ids: number[] = [];
  const dists: Float32Array[] = [];
  let logits = await steps.feed(prompt);
  for (;;) {
    const d = logSoftmax(logits);
    dists.push(d);
    ids.push(argmax(d));
    if (ids.length >= count) return { ids, dists };
    logits = await steps.feed([ids[ids.length - 1]!]);
  }
}

/** Distributions after `prompt` and after each `continuation` token but the last. */
async function oursTeacherForced(steps: OrtSteps, prompt: number[], continuation: number[]): Promise<Float32Array[]> {
  steps.reset();
  const dists = [logSoftmax(await steps.feed(prompt))];
  for (const t of continuation.slice(0, -1)) dists.push(logSoftmax(await steps.feed([t])));
  return dists;
}

interface OursCheck {
  ids: number[][];
  /** Whether our engine's own greedy ids equal the step loop's, per prompt. */
  engineAgrees: boolean[];
}

/** Ours float32: greedy ids and distributions (written to `dumps[i]`, CHECK_TOKENS × V float32), and the engine's ids for comparison. */
async function oursCheck(dumps: string[], prompts: number[][]): Promise<OursCheck> {
  const { spinning } = await decideThreadSpinning(benchSpin());
  const steps = await OrtSteps.open(path.join(MODELS_DIR, MODEL), THREADS, spinning);
  const out: OursCheck = { ids: [], engineAgrees: [] };
  for (const [i, prompt] of prompts.entries()) {
    const { ids, dists } = await oursGreedyDists(steps, prompt, CHECK_TOKENS);
    out.ids.push(ids);
    const all = new Float32Array(dists.length * steps.vocabSize);
    dists.forEach((d, j) => all.set(d, j * steps.vocabSize));
    writeFileSync(dumps[i]!, all);
  }
  await steps.close();
  const engine = oursEngine(MODEL, spinning, 1);
  await engine.initialize();
  for (const [i, prompt] of DECODE_PROMPTS.entries()) {
    const res = await engine.generate({ model: MODEL, prompt, params: { ...GREEDY, max_new_tokens: CHECK_TOKENS } });
    out.engineAgrees.push(res.token_ids.join() === out.ids[i]!.join());
  }
  await engine.close();
  return out;
}

type Top2 = [[number, number], [number, number]];

interface PromptCheck {
  positions: number;
  /** Leading tokens on which free-running greedy decoding of llama.cpp and ours agree. */
  freeRunningAgree: number;
  /** Largest |Δ log p| over the vocabulary at the first step, and over all steps. */
  step1MaxDiff: number;
  maxDiff: number;
  /** Positions where the top-1 tokens differ within TIE_MARGIN. */
  nearTies: { position: number; gap: number }[];
  /** Positions where they differ by more. */
  failures: number;
  /** The first of those. */
  failure?: { position: number; ours: Top2; llama: Top2; maxDiff: number };
  /** At the step where free-running decoding parts (when it does): both top-2 and the largest difference. */
  parting?: { position: number; ours: Top2; llama: Top2; maxDiff: number };
}

/** llama.cpp F32 teacher-forced on our continuations, compared with our distributions position by position. */
async function llamaCheck(file: string, prompts: number[][], ours: number[][], dumps: string[], vocabSize: number): Promise<PromptCheck[]> {
  const llama = await startLlama(THREADS);
  const model = await loadLlamaModel(llama, file);
  const context = await createLlamaContext(model, THREADS, 1, 512);
  const sequence = context.getSequence();
  const out: PromptCheck[] = [];
  for (const [i, prompt] of prompts.entries()) {
    const cont = ours[i]!;
    const raw = readFileSync(dumps[i]!);
    const oursDists = cont.map((_, j) => new Float32Array(raw.buffer, raw.byteOffset + j * vocabSize * 4, vocabSize));
    const theirs = await llamaTeacherForced(sequence, vocabSize, prompt, cont);
    const free = (await llamaGreedy(sequence, prompt, cont.length)).ids;
    let agree = 0;
    while (agree < cont.length && free[agree] === cont[agree]) agree++;
    const diffs = cont.map((_, j) => maxAbsDiff(oursDists[j]!, theirs[j]!));
    const c: PromptCheck = { positions: cont.length, freeRunningAgree: agree, step1MaxDiff: diffs[0]!, maxDiff: Math.max(...diffs), nearTies: [], failures: 0 };
    for (const [j, want] of cont.entries()) {
      const o = oursDists[j]!;
      const t = theirs[j]!;
      const got = argmax(t);
      if (got === want) continue;
      const gap = Math.max(o[want]! - o[got]!, t[got]! - t[want]!);
      if (gap < TIE_MARGIN) c.nearTies.push({ position: j, gap });
      else {
        c.failures++;
        c.failure ??= { position: j, ours: top2(o), llama: top2(t), maxDiff: diffs[j]! };
      }
    }
    if (agree < cont.length) c.parting = { position: agree, ours: top2(oursDists[agree]!), llama: top2(theirs[agree]!), maxDiff: diffs[agree]! };
    out.push(c);
  }
  await context.dispose();
  await model.dispose();
  await llama.dispose();
  return out;
}

interface Accuracy {
  /** Leading greedy tokens on which the 8-bit model agrees with the float32 one, per prompt. */
  agree: number[];
  /**
   * Per prompt, at the position where the 8-bit greedy tokens part from the float32 ones (null
   * when they never do): how far float32 itself preferred its token over the 8-bit one's, log p
   * difference in nats. A small margin is a near-tie that any rounding can flip.
   */
  partingMargin: (number | null)[];
  /** Mean KL(float32 ‖ 8-bit) over all positions, nats. */
  meanKl: number;
  positions: number;
  /** Share of positions where the 8-bit model's top-1 is the float32 continuation's token. */
  top1: number;
}

function accuracyOf(f32: { ids: number[]; dists: Float32Array[] }[], q8Free: number[][], q8Forced: Float32Array[][]): Accuracy {
  let kl = 0;
  let positions = 0;
  let same = 0;
  const partingMargin: (number | null)[] = [];
  const agree = f32.map((r, i) => {
    const free = q8Free[i]!;
    let n = 0;
    while (n < r.ids.length && free[n] === r.ids[n]) n++;
    const d = r.dists[n];
    partingMargin.push(d === undefined ? null : d[r.ids[n]!]! - d[free[n]!]!);
    for (const [j, d] of r.dists.entries()) {
      const q = q8Forced[i]![j]!;
      kl += klDivergence(d, q);
      positions++;
      if (argmax(q) === r.ids[j]) same++;
    }
    return n;
  });
  return { agree, partingMargin, meanKl: kl / positions, positions, top1: same / positions };
}

async function oursAccuracy(prompts: number[][]): Promise<Accuracy> {
  const { spinning } = await decideThreadSpinning(benchSpin());
  const f32 = await OrtSteps.open(path.join(MODELS_DIR, MODEL), THREADS, spinning);
  const int8 = await OrtSteps.open(path.join(MODELS_DIR, MODEL_INT8), THREADS, spinning);
  const base: { ids: number[]; dists: Float32Array[] }[] = [];
  const free: number[][] = [];
  const forced: Float32Array[][] = [];
  for (const prompt of prompts) {
    const r = await oursGreedyDists(f32, prompt, ACCURACY_TOKENS);
    base.push(r);
    free.push((await oursGreedyDists(int8, prompt, ACCURACY_TOKENS)).ids);
    forced.push(await oursTeacherForced(int8, prompt, r.ids));
  }
  await f32.close();
  await int8.close();
  return accuracyOf(base, free, forced);
}

async function llamaAccuracy(f32File: string, q8File: string, prompts: number[][], vocabSize: number): Promise<Accuracy> {
  const llama = await startLlama(THREADS);
  const f32 = await loadLlamaModel(llama, f32File);
  const q8 = await loadLlamaModel(llama, q8File);
  const f32Seq = (await createLlamaContext(f32, THREADS, 1, 512)).getSequence();
  const q8Seq = (await createLlamaContext(q8, THREADS, 1, 512)).getSequence();
  const base: { ids: number[]; dists: Float32Array[] }[] = [];
  const free: number[][] = [];
  const forced: Float32Array[][] = [];
  for (const prompt of prompts) {
    const ids = (await llamaGreedy(f32Seq, prompt, ACCURACY_TOKENS)).ids;
    base.push({ ids, dists: await llamaTeacherForced(f32Seq, vocabSize, prompt, ids) });
    free.push((await llamaGreedy(q8Seq, prompt, ACCURACY_TOKENS)).ids);
    forced.push(await llamaTeacherForced(q8Seq, vocabSize, prompt, ids));
  }
  await llama.dispose();
  return accuracyOf(base, free, forced);
}

type ChildRequest =
  | { kind: "ours-batch1"; model: string }
  | { kind: "ours-batch8"; model: string }
  | { kind: "llama-batch1"; file: string; prompts: number[][] }
  | { kind: "llama-batch8"; file: string; prompts: number[][] }
  | { kind: "ours-check"; dumps: string[]; prompts: number[][] }
  | { kind: "llama-check"; file: string; prompts: number[][]; ours: number[][]; dumps: string[]; vocabSize: number }
  | { kind: "ours-accuracy"; prompts: number[][] }
  | { kind: "llama-accuracy"; f32: string; q8: string; prompts: number[][]; vocabSize: number };

function childMain(req: ChildRequest): Promise<unknown> {
  switch (req.kind) {
    case "ours-batch1":
      return oursBatch1(req.model);
    case "ours-batch8":
      return oursBatch8(req.model);
    case "llama-batch1":
      return llamaBatch1(req.file, req.prompts);
    case "llama-batch8":
      return llamaBatch8(req.file, req.prompts);
    case "ours-check":
      return oursCheck(req.dumps, req.prompts);
    case "llama-check":
      return llamaCheck(req.file, req.prompts, req.ours, req.dumps, req.vocabSize);
    case "ours-accuracy":
      return oursAccuracy(req.prompts);
    case "llama-accuracy":
      return llamaAccuracy(req.f32, req.q8, req.prompts, req.vocabSize);
  }
}

// ---------------------------------------------------------------- the parent

async function child<T>(req: ChildRequest, env: NodeJS.ProcessEnv): Promise<T> {
  const { stdout } = await run(process.execPath, ["--import", "tsx", path.join(ROOT, "bench", "inference.ts"), "--child", JSON.stringify(req)], { maxBuffer: 64 << 20, env });
  const lines = stdout.trim().split("\n");
  return JSON.parse(lines[lines.length - 1]!) as T;
}

async function xenova(): Promise<SideResult> {
  const script = path.join(ROOT, "test", "inference", "xenova-generate.mjs");
  const cases = DECODE_PROMPTS.map((prompt) => ({ prompt, max_new_tokens: TOKENS }));
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

async function hfTransformers(prompts: number[][]): Promise<SideResult> {
  const script = path.join(ROOT, "bench", "hf-transformers-generate.mjs");
  const cases = prompts.map((ids) => ({ ids, max_new_tokens: TOKENS }));
  const input = { modelsDir: MODELS_DIR, model: MODEL, threads: THREADS, cases, repeat: 2 };
  const { stdout } = await run(process.execPath, [script, JSON.stringify(input)], { maxBuffer: 64 << 20 });
  const parsed = JSON.parse(stdout) as { results: { ttft_ms: number; decode_tokens_per_second: number }[]; rss_peak_bytes: number };
  const results = parsed.results.slice(cases.length);
  return { tokensPerSecond: results.map((r) => r.decode_tokens_per_second), ttftMs: results.map((r) => r.ttft_ms), rssPeakBytes: parsed.rss_peak_bytes };
}

const fmt = (x: number, digits = 1): string => x.toFixed(digits);
const topText = (t: Top2): string => t.map(([id, lp]) => `${id} ${lp.toFixed(5)}`).join(", ");

async function checkConversion(env: NodeJS.ProcessEnv, f32File: string, prompts: number[][], vocabSize: number): Promise<boolean> {
  const dumps = prompts.map((_, i) => path.join(tmpdir(), `aitbc-bench-${process.pid}-ours-${i}.f32`));
  try {
    process.stderr.write(`conversion check: ours float32 and llama.cpp F32, ${CHECK_TOKENS} tokens per prompt…\n`);
    const ours = await child<OursCheck>({ kind: "ours-check", dumps, prompts }, env);
    const checks = await child<PromptCheck[]>({ kind: "llama-check", file: f32File, prompts, ours: ours.ids, dumps, vocabSize }, env);
    const lines = [`conversion check (llama.cpp F32 teacher-forced on our float32 greedy tokens; log-probabilities, nats; tie margin ${TIE_MARGIN}):`];
    let ok = true;
    for (const [i, c] of checks.entries()) {
      const ties = c.nearTies.length === 0 ? "no near-ties" : `near-ties at ${c.nearTies.map((t) => `${t.position} (gap ${t.gap.toExponential(1)})`).join(", ")}`;
      lines.push(
        `  prompt ${i + 1}: top-1 agrees at ${c.positions - c.nearTies.length - c.failures} of ${c.positions} positions, ${c.failures} differ, ${ties}; ` +
          `free-running greedy agrees on ${c.freeRunningAgree}/${c.positions}; max |Δ log p| step 1 ${c.step1MaxDiff.toExponential(1)}, all steps ${c.maxDiff.toExponential(1)}; ` +
          `our engine's ids ${ours.engineAgrees[i] === true ? "equal" : "DIFFER FROM"} the step loop's`,
      );
      if (c.parting !== undefined) lines.push(`    free-running parts at step ${c.parting.position + 1}: ours top-2 ${topText(c.parting.ours)}; llama.cpp ${topText(c.parting.llama)}; max |Δ log p| ${c.parting.maxDiff.toExponential(1)}`);
      if (c.failure !== undefined) {
        ok = false;
        lines.push(`    parts at step ${c.failure.position + 1}: ours top-2 ${topText(c.failure.ours)}; llama.cpp ${topText(c.failure.llama)}; max |Δ log p| ${c.failure.maxDiff.toExponential(1)}`);
      }
      if (c.positions < 16) ok = false;
    }
    process.stdout.write(`${lines.join("\n")}\n\n`);
    return ok;
  } finally {
    for (const d of dumps) rmSync(d, { force: true });
  }
}

async function main(): Promise<void> {
  const env = await childEnv();
  await ensureModel(MODELS_DIR, MODEL);
  await ensureModel(MODELS_DIR, MODEL_INT8);
  const f32File = ensureGguf(MODELS_DIR, MODEL, "F32");
  const q8File = ensureGguf(MODELS_DIR, MODEL, "Q8_0");
  const tokenizer = await Tokenizer.load(path.join(MODELS_DIR, MODEL));
  const prompts = DECODE_PROMPTS.map((p) => tokenizer.encode(p));
  const batchPrompts = BATCH_PROMPTS.map((p) => tokenizer.encode(p));
  const info = loadModelInfo(path.join(MODELS_DIR, MODEL));
  const load0 = loadavg()[0]!;

  if (!(await checkConversion(env, f32File, prompts, info.vocabSize))) {
    process.stdout.write("llama.cpp's F32 conversion does not compute what ours does: not timing it.\n");
    process.exitCode = 1;
    return;
  }
  const out: string[] = [`${THREADS} threads for every engine; ${TOKENS} new tokens per generation, greedy; medians of ${REPEAT} rounds`, ""];

  if (SECTIONS.has("batch1")) {
    let copy = await copyBandwidth();
    let read = await readBandwidth();
    const empty = (): SideResult => ({ tokensPerSecond: [], ttftMs: [], rssPeakBytes: 0, spinning: [] });
    const sides = {
      fp32: empty(),
      int8: empty(),
      llamaF32: empty(),
      llamaQ8: empty(),
      xenova: empty(),
      hf: empty(),
    };
    const add = (into: SideResult, r: SideResult): void => {
      into.tokensPerSecond.push(...r.tokensPerSecond);
      into.ttftMs.push(...r.ttftMs);
      into.rssPeakBytes = Math.max(into.rssPeakBytes, r.rssPeakBytes);
      into.spinning?.push(...(r.spinning ?? []));
    };
    for (let round = 1; round <= REPEAT; round++) {
      process.stderr.write(`batch 1, round ${round}/${REPEAT}: ours float32…`);
      add(sides.fp32, await child<SideResult>({ kind: "ours-batch1", model: MODEL }, env));
      process.stderr.write(" llama.cpp F32…");
      add(sides.llamaF32, await child<SideResult>({ kind: "llama-batch1", file: f32File, prompts }, env));
      process.stderr.write(" ours int8…");
      add(sides.int8, await child<SideResult>({ kind: "ours-batch1", model: MODEL_INT8 }, env));
      process.stderr.write(" llama.cpp Q8_0…");
      add(sides.llamaQ8, await child<SideResult>({ kind: "llama-batch1", file: q8File, prompts }, env));
      process.stderr.write(" transformers.js 2.17.2…");
      add(sides.xenova, await xenova());
      process.stderr.write(" @huggingface/transformers 4.3.2…\n");
      add(sides.hf, await hfTransformers(prompts));
    }
    copy = Math.max(copy, await copyBandwidth());
    read = Math.max(read, await readBandwidth());
    const spin = (r: SideResult): string => [...new Set((r.spinning ?? []).map((s) => (s ? "spin" : "no spin")))].join("/");
    const row = (name: string, r: SideResult): string =>
      `${name.padEnd(40)} ${fmt(median(r.tokensPerSecond)).padStart(10)} ${fmt(median(r.ttftMs)).padStart(10)} ${(r.rssPeakBytes / 2 ** 20).toFixed(0).padStart(14)}`;
    const bound = (label: string, format: WeightFormat, r: SideResult): string => {
      const bytes = gpt2WeightBytesPerToken(info, format);
      const pct = (bw: number): string => `${((100 * median(r.tokensPerSecond)) / (bw / bytes)).toFixed(0)}%`;
      return `${label.padEnd(9)} ${(bytes / 1e6).toFixed(1).padStart(6)} MB/token → ${fmt(copy / bytes).padStart(6)} | ${fmt(read / bytes).padStart(6)} tokens/s; ours ${pct(copy)} | ${pct(read)}`;
    };
    const ratio = (a: SideResult, b: SideResult): string => `${(median(a.tokensPerSecond) / median(b.tokensPerSecond)).toFixed(2)}×`;
    out.push(
      `batch 1 ${"".padEnd(32)} ${"tokens/s".padStart(10)} ${"TTFT ms".padStart(10)} ${"peak RSS MiB".padStart(14)}   (medians)`,
      row(`ours float32 (ORT 1.30, ${spin(sides.fp32)})`, sides.fp32),
      row("llama.cpp F32 (node-llama-cpp 3.21.1)", sides.llamaF32),
      row(`ours int8 (MatMulNBits, ${spin(sides.int8)})`, sides.int8),
      row("llama.cpp Q8_0", sides.llamaQ8),
      row("transformers.js 2.17.2 float32", sides.xenova),
      row("@huggingface/transformers 4.3.2 fp32", sides.hf),
      "",
      `bandwidth: copy ${fmt(copy / 1e9)} GB/s (read + written), read-only ${fmt(read / 1e9)} GB/s; bounds (weights per token ÷ copy | read bandwidth):`,
      bound("float32", "float32", sides.fp32),
      bound("int8", "int8", sides.int8),
      "",
      `decode ours f32 / llama.cpp F32:         ${ratio(sides.fp32, sides.llamaF32)}  (target ≥ 1.15×)`,
      `decode ours int8 / llama.cpp Q8_0:       ${ratio(sides.int8, sides.llamaQ8)}  (target ≥ 1.3×)`,
      `decode ours f32 / transformers.js 2.17:  ${ratio(sides.fp32, sides.xenova)}`,
      `decode ours f32 / HF transformers 4.3:   ${ratio(sides.fp32, sides.hf)}`,
      "",
    );
  }

  if (SECTIONS.has("batch8")) {
    const r = { ours: [] as number[], llama: [] as number[], ours8: [] as number[], llama8: [] as number[] };
    for (let round = 1; round <= REPEAT; round++) {
      process.stderr.write(`${CONCURRENT} at once, round ${round}/${REPEAT}: ours float32…`);
      r.ours.push(await child<number>({ kind: "ours-batch8", model: MODEL }, env));
      process.stderr.write(" llama.cpp F32…");
      r.llama.push(await child<number>({ kind: "llama-batch8", file: f32File, prompts: batchPrompts }, env));
      process.stderr.write(" ours int8…");
      r.ours8.push(await child<number>({ kind: "ours-batch8", model: MODEL_INT8 }, env));
      process.stderr.write(" llama.cpp Q8_0…\n");
      r.llama8.push(await child<number>({ kind: "llama-batch8", file: q8File, prompts: batchPrompts }, env));
    }
    out.push(
      `${CONCURRENT} generations at once, aggregate tokens/s (medians): ours batched (max_batch ${CONCURRENT}) | llama.cpp (${CONCURRENT} sequences, one context) | ratio`,
      `  float32 / F32:  ${fmt(median(r.ours)).padStart(7)} | ${fmt(median(r.llama)).padStart(7)} | ${(median(r.ours) / median(r.llama)).toFixed(2)}×  (target ≥ 1.3×)`,
      `  int8 / Q8_0:    ${fmt(median(r.ours8)).padStart(7)} | ${fmt(median(r.llama8)).padStart(7)} | ${(median(r.ours8) / median(r.llama8)).toFixed(2)}×  (target ≥ 1.3×)`,
      "",
    );
  }

  if (SECTIONS.has("accuracy")) {
    process.stderr.write(`accuracy: ${ACCURACY_PROMPTS} prompts, ${ACCURACY_TOKENS} tokens each…\n`);
    const accuracyPrompts = ACCURACY_PROMPT_SET.slice(0, ACCURACY_PROMPTS).map((p) => tokenizer.encode(p));
    const ours = await child<Accuracy>({ kind: "ours-accuracy", prompts: accuracyPrompts }, env);
    const theirs = await child<Accuracy>({ kind: "llama-accuracy", f32: f32File, q8: q8File, prompts: accuracyPrompts, vocabSize: info.vocabSize }, env);
    const sum = (a: Accuracy): number => a.agree.reduce((x, y) => x + y, 0);
    const margins = (a: Accuracy): string => a.partingMargin.map((m) => (m === null ? "—" : m.toFixed(3))).join(", ");
    const row = (name: string, a: Accuracy): string =>
      `  ${name.padEnd(24)} ${String(sum(a)).padStart(8)} ${String(median(a.agree)).padStart(8)} ${a.meanKl.toExponential(2).padStart(10)} ${`${(100 * a.top1).toFixed(1)}%`.padStart(8)}`;
    const closer = sum(ours) >= sum(theirs) && ours.meanKl <= theirs.meanKl;
    out.push(
      `accuracy, 8-bit against float32 (${ACCURACY_PROMPTS} prompts, ${ours.positions} positions, teacher-forced on the float32 greedy continuation; leading greedy tokens that agree, of ${ACCURACY_TOKENS} a prompt):`,
      `  ${"".padEnd(24)} ${"lead sum".padStart(8)} ${"median".padStart(8)} ${"mean KL".padStart(10)} ${"top-1".padStart(8)}`,
      row("ours int8 vs float32", ours),
      row("llama.cpp Q8_0 vs F32", theirs),
      `  leading agree per prompt: ours ${ours.agree.join(", ")}`,
      `                       llama.cpp ${theirs.agree.join(", ")}`,
      `  float32's own margin (log p of its token − of the 8-bit one's, nats) where each parts: ours ${margins(ours)}; llama.cpp ${margins(theirs)}`,
      `  ratio of leading sums ours/llama.cpp ${(sum(ours) / Math.max(1, sum(theirs))).toFixed(2)}, of mean KL ${(ours.meanKl / theirs.meanKl).toFixed(2)}: ` +
        `${closer ? "at least as close as Q8_0 on both" : "not as close as Q8_0 on both"} (target: sum ≥ and KL ≤ llama.cpp's)`,
      "",
    );
  }
  out.push(`load average (1 min) before ${load0.toFixed(2)}, after ${loadavg()[0]!.toFixed(2)}`);
  process.stdout.write(`${out.join("\n")}\n`);
}

const at = process.argv.indexOf("--child");
if (at >= 0) {
  const result = await childMain(JSON.parse(process.argv[at + 1] ?? "{}") as ChildRequest);
  process.stdout.write(`\n${JSON.stringify(result)}\n`);
} else await main();
