/**
 * `npm run bench:int8`: how close int8 weights stay to float32, and how fast they decode, over
 * a grid of block sizes, MatMulNBits accuracy levels and first layers kept float32, each made by `aitbc models quantize`'s
 * code from gpt2-124m-random (built once when missing). Against float32, on the same prompts:
 *
 * - leading greedy tokens that agree: float32 decodes each prompt greedily; an int8 variant's
 *   greedy decode follows it for as long as its argmax over the same prefix is float32's
 *   token, so the count is read off one teacher-forced run (argmax ties aside);
 * - top-1: the share of all positions whose argmax agrees (teacher-forced, so a divergence
 *   early on costs one position, not the rest);
 * - mean KL(float32 ‖ int8) of the next-token distributions, in nats, over every position of
 *   the float32 greedy continuations (BENCH_PROMPTS prompts × BENCH_KL_TOKENS; 4 × 64 = 256);
 * - decode tokens/s of our engine on the graph we ship (logits for the last position only),
 *   greedy, batch 1, medians over BENCH_REPEAT rounds (float32 and every variant in turn each
 *   round, so that load from other processes falls on all alike), and the ratio to float32.
 *
 * The quality figures come from a twin of the model in optimum's layout (same seed, same
 * weights, logits for every position), quantized the same way. Environment: BENCH_BLOCKS
 * (default 32,64,128), BENCH_LEVELS (default 0,4), BENCH_FLOAT32_LAYERS (default 0,1), BENCH_KL_TOKENS (64), BENCH_TOKENS (decode
 * tokens per generation, 32), BENCH_REPEAT (3), BENCH_THREADS (intra-op threads, 0 = one per
 * CPU), BENCH_SPIN=0|1 (as in bench:inference).
 */
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import * as ort from "onnxruntime-node";
import { silentLogger } from "../src/common/logger.js";
import { buildFeeds } from "../src/inference/batch-decoder.js";
import { emptyPast, type CacheModel } from "../src/inference/kv-cache.js";
import { buildModel, ONNX_MODEL_PATH } from "../src/inference/models/build-model.js";
import { LOGITS } from "../src/inference/models/model-io.js";
import { quantizeModel } from "../src/inference/models/quantize-model.js";
import { RECIPES } from "../src/inference/models/recipes.js";
import { OnnxEngine } from "../src/inference/onnx-engine.js";
import { decideThreadSpinning } from "../src/inference/session-factory.js";
import { Tokenizer } from "../src/inference/tokenizer.js";
import { benchSpin, DECODE_PROMPTS, ensureModel, median } from "./bench-support.js";
import { argmax, klDivergence, logSoftmax64 as logSoftmax } from "./distributions.js";

const ROOT = path.resolve(import.meta.dirname, "..");
const MODELS_DIR = path.join(ROOT, "models");
const MODEL = "gpt2-124m-random";
const list = (value: string | undefined, fallback: number[]): number[] => (value === undefined ? fallback : value.split(",").map(Number));
const BLOCKS = list(process.env.BENCH_BLOCKS, [32, 64, 128]);
const LEVELS = list(process.env.BENCH_LEVELS, [0, 4]);
const FLOAT32_LAYERS = list(process.env.BENCH_FLOAT32_LAYERS, [0, 1]);
const KL_TOKENS = Number(process.env.BENCH_KL_TOKENS ?? 64);
const TOKENS = Number(process.env.BENCH_TOKENS ?? 32);
const REPEAT = Number(process.env.BENCH_REPEAT ?? 3);
const THREADS = Number(process.env.BENCH_THREADS ?? 0);
const PROMPTS = [...DECODE_PROMPTS, "Once upon a time, in a small village by the sea, there lived an old fisherman who"];
/** Decode speed is measured on the first two prompts: the slow accuracy levels would otherwise take many minutes. */
const SPEED_PROMPTS = PROMPTS.slice(0, 2);

interface Variant {
  name: string;
  blockSize: number;
  accuracyLevel: number;
  float32Layers: number;
  /** Optimum-layout twin, for the quality figures. */
  optimumDir: string;
  leadingAgree: number[];
  top1: number;
  meanKl: number;
  tokensPerSecond: number[];
}

/** Logits [S, V] of one sequence, every position (optimum layout), no past: the decoder's own feeds. */
async function allLogits(session: ort.InferenceSession, ids: number[], model: CacheModel): Promise<Float32Array> {
  const out = await session.run(buildFeeds(new Set(session.inputNames), ids, 0, emptyPast(model, 1)), [LOGITS]);
  return out[LOGITS]!.data as Float32Array;
}

/** Our engine on one model folder: decode tokens/s of each speed prompt, greedy. */
async function decodeSpeed(modelsDir: string, model: string, spinning: boolean): Promise<number[]> {
  const engine = new OnnxEngine(
    { executionProvider: "cpu", deviceIds: [], modelsDir, models: [model], intraOpThreads: THREADS, interOpThreads: 0, graphOptimizationLevel: "all", threadSpinning: spinning },
    { log: silentLogger() },
  );
  await engine.initialize();
  try {
    const params = { max_new_tokens: TOKENS, temperature: 0, top_k: 0, top_p: 1, repetition_penalty: 1, stop: [], seed: 0 };
    // Warm-up: onnxruntime allocates its arenas on the first runs.
    await engine.generate({ model, prompt: SPEED_PROMPTS[0]!, params: { ...params, max_new_tokens: 4 } });
    const out: number[] = [];
    for (const prompt of SPEED_PROMPTS) out.push((await engine.generate({ model, prompt, params })).timing.tokens_per_second);
    return out;
  } finally {
    await engine.close();
  }
}

async function main(): Promise<void> {
  const recipe = RECIPES[MODEL]!;
  const c = recipe.config;
  const shape: CacheModel = { name: MODEL, nLayer: c.nLayer, nHead: c.nHead, headDim: c.nEmbd / c.nHead };
  await ensureModel(MODELS_DIR, MODEL);
  const scratch = mkdtempSync(path.join(os.tmpdir(), "aitbc-bench-int8-"));
  try {
    process.stderr.write(`building the optimum-layout twin of ${MODEL} and ${BLOCKS.length * LEVELS.length * FLOAT32_LAYERS.length} × 2 int8 variants in ${scratch}…\n`);
    const optimumDir = path.join(scratch, "optimum", MODEL);
    await buildModel(recipe, optimumDir, { layout: "optimum" });
    const variants: Variant[] = [];
    for (const blockSize of BLOCKS) {
      for (const accuracyLevel of LEVELS) {
        for (const float32Layers of FLOAT32_LAYERS) {
          const name = `${MODEL}-int8-b${blockSize}-l${accuracyLevel}-f${float32Layers}`;
          const options = { blockSize, accuracyLevel, float32Layers };
          await quantizeModel(path.join(MODELS_DIR, MODEL), path.join(scratch, "ours", name), options);
          await quantizeModel(optimumDir, path.join(scratch, "optimum", name), options);
          variants.push({ name, ...options, optimumDir: path.join(scratch, "optimum", name), leadingAgree: [], top1: 0, meanKl: 0, tokensPerSecond: [] });
        }
      }
    }

    // Float32's greedy continuations, one token at a time over the whole sequence (no cache: exact and simple).
    process.stderr.write(`float32 greedy continuations (${PROMPTS.length} × ${KL_TOKENS} tokens)…\n`);
    const tokenizer = await Tokenizer.load(path.join(MODELS_DIR, MODEL));
    const fp32 = await ort.InferenceSession.create(path.join(optimumDir, ONNX_MODEL_PATH), { graphOptimizationLevel: "all", intraOpNumThreads: THREADS });
    const sequences: { prompt: number[]; continuation: number[]; logP: Float64Array[] }[] = [];
    for (const text of PROMPTS) {
      const prompt = tokenizer.encode(text);
      const ids = [...prompt];
      for (let t = 0; t < KL_TOKENS; t++) {
        const logits = await allLogits(fp32, ids, shape);
        ids.push(argmax(logits.subarray((ids.length - 1) * c.vocabSize, ids.length * c.vocabSize)));
      }
      const continuation = ids.slice(prompt.length);
      // The teacher-forced run: prompt + continuation but its last token; row prompt.length − 1 + t predicts continuation[t].
      const logits = await allLogits(fp32, ids.slice(0, -1), shape);
      const logP = continuation.map((_, t) => logSoftmax(logits.subarray((prompt.length - 1 + t) * c.vocabSize, (prompt.length + t) * c.vocabSize)));
      sequences.push({ prompt, continuation, logP });
    }
    await fp32.release();
    const positions = sequences.length * KL_TOKENS;

    for (const v of variants) {
      process.stderr.write(`quality: ${v.name}…\n`);
      const session = await ort.InferenceSession.create(path.join(v.optimumDir, ONNX_MODEL_PATH), { graphOptimizationLevel: "all", intraOpNumThreads: THREADS });
      let kl = 0;
      let top1 = 0;
      for (const s of sequences) {
        const ids = [...s.prompt, ...s.continuation.slice(0, -1)];
        const logits = await allLogits(session, ids, shape);
        let leading = -1;
        s.continuation.forEach((token, t) => {
          const row = logits.subarray((s.prompt.length - 1 + t) * c.vocabSize, (s.prompt.length + t) * c.vocabSize);
          kl += klDivergence(s.logP[t]!, logSoftmax(row));
          const agrees = argmax(row) === token;
          if (agrees) top1++;
          if (!agrees && leading < 0) leading = t;
        });
        v.leadingAgree.push(leading < 0 ? s.continuation.length : leading);
      }
      v.meanKl = kl / positions;
      v.top1 = top1 / positions;
      await session.release();
    }

    const { spinning } = await decideThreadSpinning(benchSpin());
    const fp32Speed: number[] = [];
    for (let round = 1; round <= REPEAT; round++) {
      process.stderr.write(`speed round ${round}/${REPEAT}: float32…`);
      fp32Speed.push(...(await decodeSpeed(MODELS_DIR, MODEL, spinning)));
      for (const v of variants) {
        process.stderr.write(` ${v.name.slice(MODEL.length + 1)}…`);
        v.tokensPerSecond.push(...(await decodeSpeed(path.join(scratch, "ours"), v.name, spinning)));
      }
      process.stderr.write("\n");
    }

    const base = median(fp32Speed);
    const header = ["block", "accuracy", "float32 layers", `leading agree (of ${KL_TOKENS} per prompt)`, "top-1", "mean KL (nats)", "tokens/s", "× float32"];
    const leading = (counts: number[]): string => `${counts.join(", ")} (${counts.reduce((a, b) => a + b, 0)}/${positions})`;
    const rows = [
      ["float32", "-", "all", leading(sequences.map(() => KL_TOKENS)), "100.0%", "0", base.toFixed(1), "1.00"],
      ...variants.map((v) => [
        String(v.blockSize),
        String(v.accuracyLevel),
        String(v.float32Layers),
        leading(v.leadingAgree),
        `${(100 * v.top1).toFixed(1)}%`,
        v.meanKl.toExponential(2),
        median(v.tokensPerSecond).toFixed(1),
        (median(v.tokensPerSecond) / base).toFixed(2),
      ]),
    ];
    const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
    const line = (r: string[]): string => r.map((cell, i) => (i < 3 ? cell.padEnd(widths[i]!) : cell.padStart(widths[i]!))).join("  ");
    process.stdout.write(
      `${MODEL}: ${sequences.length} prompts × ${KL_TOKENS} greedy float32 tokens (${positions} positions, teacher-forced); ` +
        `decode ${TOKENS} tokens × ${SPEED_PROMPTS.length} prompts × ${REPEAT} rounds, medians, ${spinning ? "spinning" : "no spinning"}, batch 1\n`,
    );
    process.stdout.write(`${[line(header), ...rows.map(line)].join("\n")}\n`);
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
}

await main();
