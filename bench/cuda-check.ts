/**
 * `npm run bench:cuda`: run as is on a machine with a GPU to check and time the CUDA path.
 *
 * 1. Is there a GPU (nvidia-smi)? If not, say so plainly and exit 2.
 * 2. Are the CUDA provider files installed, and which libraries can the loader not find?
 * 3. An OnnxEngine with execution_provider "cuda" on device 0 (no fallback: it must load).
 * 4. Greedy generation on CUDA and on the CPU: the same token ids on tiny-gpt2 (float
 *    rounding may differ on GPUs, so a mismatch is reported, not fatal, for bigger models),
 *    and CUDA decode tokens/s and time to first token next to the CPU's; gpt2-124m-random-int8
 *    too (MatMulNBits: onnxruntime runs the nodes its CUDA provider lacks on the CPU, which
 *    shows as CUDA no faster than the CPU).
 * 5. gpt2-124m-random: 8 generations at once on CUDA (sharing decode steps) against the same 8
 *    one after another, aggregate tokens/s and the ratio.
 * 6. gpt2-124m-random, 512 new tokens on CUDA: tokens/s against the 64-token run (the kept KV
 *    cache crosses host↔device each step as an input, so this shows what a long context costs).
 * Exit 0 when CUDA loads and generates, 1 when it does not, 2 when there is no GPU.
 * Environment: CUDA_DEVICE (default 0), BENCH_TOKENS (default 64).
 */
import { execFileSync } from "node:child_process";
import path from "node:path";
import { silentLogger } from "../src/common/logger.js";
import { toAppError } from "../src/common/errors.js";
import { checkCudaProvider, describeCudaProviderProblem } from "../src/inference/cuda-provider.js";
import type { GenerateResult } from "../src/inference/engine.js";
import { OnnxEngine } from "../src/inference/onnx-engine.js";
import { ensureModel } from "./bench-support.js";

const ROOT = path.resolve(import.meta.dirname, "..");
const MODELS_DIR = path.join(ROOT, "models");
const DEVICE = Number(process.env.CUDA_DEVICE ?? 0);
const TOKENS = Number(process.env.BENCH_TOKENS ?? 64);
const PROMPT = "The history of the city begins in the early years of the";
const say = (line: string): void => void process.stdout.write(`${line}\n`);

async function main(): Promise<number> {
  let gpus: string[];
  try {
    gpus = execFileSync("nvidia-smi", ["--query-gpu=index,name,memory.total,driver_version", "--format=csv,noheader"], { encoding: "utf8", timeout: 15_000 })
      .split("\n")
      .filter((l) => l.trim() !== "");
  } catch {
    gpus = [];
  }
  if (gpus.length === 0) {
    say("NO GPU: nvidia-smi is missing or lists no GPU on this machine; there is no CUDA path to check here.");
    return 2;
  }
  say(`GPUs:\n  ${gpus.join("\n  ")}`);

  const provider = checkCudaProvider();
  const problem = describeCudaProviderProblem(provider);
  say(problem === "" ? `CUDA provider: installed in ${provider.dir}` : `CUDA provider: ${problem}`);
  if (provider.missingFiles.length > 0) return 1;

  const models = ["tiny-gpt2", "gpt2-124m-random", "gpt2-124m-random-int8"];
  for (const name of models) await ensureModel(MODELS_DIR, name);

  const config = { modelsDir: MODELS_DIR, models, intraOpThreads: 0, interOpThreads: 0, graphOptimizationLevel: "all" as const };
  const cuda = new OnnxEngine({ ...config, executionProvider: "cuda", deviceIds: [DEVICE] }, { log: silentLogger() });
  const cpu = new OnnxEngine({ ...config, executionProvider: "cpu", deviceIds: [] }, { log: silentLogger() });
  try {
    try {
      await cuda.initialize();
    } catch (err) {
      const e = toAppError(err);
      say(`CUDA session: FAILED (${e.code}): ${typeof e.details?.reason === "string" ? e.details.reason : e.message}`);
      return 1;
    }
    say(`CUDA session: loaded on ${cuda.models().map((m) => `${m.name}@${m.device}`).join(", ")}`);
    await cpu.initialize();
    const params = { max_new_tokens: TOKENS, temperature: 0, top_k: 0, top_p: 1, repetition_penalty: 1, stop: [], seed: 0 };
    say(`\n${"model".padEnd(22)} ${"device".padEnd(8)} ${"tokens/s".padStart(9)} ${"TTFT ms".padStart(9)}  same ids as CPU`);
    let ok = true;
    for (const model of models) {
      // Warm-up: the first CUDA runs pay for kernel selection and allocations.
      await cuda.generate({ model, prompt: PROMPT, params: { ...params, max_new_tokens: 4 } });
      const g: GenerateResult = await cuda.generate({ model, prompt: PROMPT, params });
      const c: GenerateResult = await cpu.generate({ model, prompt: PROMPT, params });
      const same = JSON.stringify(g.token_ids) === JSON.stringify(c.token_ids);
      if (!same && model === "tiny-gpt2") ok = false;
      for (const [device, r] of [[`cuda:${DEVICE}`, g], ["cpu", c]] as const) {
        say(`${model.padEnd(22)} ${device.padEnd(8)} ${r.timing.tokens_per_second.toFixed(1).padStart(9)} ${r.timing.time_to_first_token_ms.toFixed(1).padStart(9)}  ${device === "cpu" ? "" : same ? "yes" : "NO"}`);
      }
    }
    // Continuous batching on the GPU: 8 generations at once share decode steps (max_batch 8, the
    // default) against the same 8 one after another.
    const batch = Array.from({ length: 8 }, (_, i) => `${PROMPT} (${i})`);
    const aggregate = async (prompts: string[], together: boolean): Promise<number> => {
      const t = performance.now();
      const one = (prompt: string): Promise<GenerateResult> => cuda.generate({ model: "gpt2-124m-random", prompt, params });
      const rs: GenerateResult[] = [];
      if (together) rs.push(...(await Promise.all(prompts.map(one))));
      else for (const prompt of prompts) rs.push(await one(prompt));
      return rs.reduce((n, r) => n + r.usage.completion_tokens, 0) / ((performance.now() - t) / 1000);
    };
    const oneByOne = await aggregate(batch, false);
    const shared = await aggregate(batch, true);
    say(`\ngpt2-124m-random on cuda:${DEVICE}, 8 generations: ${shared.toFixed(1)} tokens/s sharing decode steps, ${oneByOne.toFixed(1)} one at a time: ${(shared / oneByOne).toFixed(2)}×`);
    const long = await cuda.generate({ model: "gpt2-124m-random", prompt: PROMPT, params: { ...params, max_new_tokens: 512 } });
    const short = await cuda.generate({ model: "gpt2-124m-random", prompt: PROMPT, params });
    say(`gpt2-124m-random on cuda:${DEVICE}, one generation: ${long.timing.tokens_per_second.toFixed(1)} tokens/s over 512 new tokens, ${short.timing.tokens_per_second.toFixed(1)} over ${TOKENS}: ${(long.timing.tokens_per_second / short.timing.tokens_per_second).toFixed(2)}×`);
    say(ok ? "\nCUDA path: OK" : "\nCUDA path: generates, but tiny-gpt2's greedy ids differ from the CPU's");
    return ok ? 0 : 1;
  } finally {
    await cuda.close();
    await cpu.close();
  }
}

process.exitCode = await main();
