import { execFileSync } from "node:child_process";
import { InvalidArgumentError, Option, type Command } from "commander";
import type { LogLevel } from "../../common/logger.js";
import { logFormatFlag } from "../global-options.js";
import { GENERATION_BOUNDS, GENERATION_DEFAULTS, type ResolvedGenerationParameters } from "../../protocol/generation.js";

interface GenerateOptions {
  model: string;
  prompt: string;
  modelsDir: string;
  maxNewTokens: number;
  temperature: number;
  topK: number;
  topP: number;
  repetitionPenalty: number;
  stop: string[];
  seed: number;
  executionProvider: "auto" | "cuda" | "cpu";
  device?: number[];
  threads: number;
  json: boolean;
  verbose: boolean;
}

/**
 * `aitbc generate`: one local generation through the same engine the miner runs, streaming
 * tokens to the terminal, so an operator can check a host (GPU or CPU) and anyone can compare
 * outputs across hosts (same seed, same output). Ctrl-C cancels and prints what was generated.
 */
export function registerGenerateCommand(program: Command): void {
  program
    .command("generate")
    .description("run one generation locally through the inference engine and stream the tokens")
    .requiredOption("--model <name>", "model folder name under the models dir")
    .requiredOption("--prompt <text>", "prompt text")
    .option("--models-dir <dir>", "folder that holds model folders", "models")
    .option("--max-new-tokens <n>", "tokens to generate at most", bounded("max_new_tokens", true), GENERATION_DEFAULTS.max_new_tokens)
    .option("--temperature <t>", "sampling temperature, 0 = greedy", bounded("temperature"), GENERATION_DEFAULTS.temperature)
    .option("--top-k <k>", "keep the k most likely tokens, 0 = off", bounded("top_k", true), GENERATION_DEFAULTS.top_k)
    .option("--top-p <p>", "nucleus mass, 1 = off", bounded("top_p"), GENERATION_DEFAULTS.top_p)
    .option("--repetition-penalty <r>", "penalty on repeated tokens, 1 = off", bounded("repetition_penalty"), GENERATION_DEFAULTS.repetition_penalty)
    .option("--stop <text>", "stop sequence (repeatable)", (v: string, acc: string[]) => [...acc, v], [] as string[])
    .option("--seed <n>", "sampling seed", bounded("seed", true), 0)
    .addOption(new Option("--execution-provider <ep>", "auto tries CUDA and falls back to the CPU").choices(["auto", "cuda", "cpu"]).default("auto"))
    .option("--device <ids>", "CUDA device ids, comma-separated (default: 0 when nvidia-smi sees a GPU)", parseDeviceIds)
    .option("--threads <n>", "onnxruntime intra-op threads, 0 = one per CPU", bounded("threads", true), 0)
    .option("--json", "print one JSON result instead of streaming text", false)
    .option("--verbose", "log engine events (model loaded, device, fallback) on stderr", false)
    .action(async (opts: GenerateOptions, cmd: Command) => {
      // Loaded here, not at the top: `aitbc generate --help` and its usage errors need no onnxruntime.
      const [{ createLogger }, { OnnxEngine }] = await Promise.all([import("../../common/logger.js"), import("../../inference/onnx-engine.js")]);
      const level: LogLevel = opts.verbose ? "info" : "warn";
      const log = createLogger({ level, name: "generate", destination: 2, format: logFormatFlag(cmd) ?? "auto" });
      const deviceIds = opts.executionProvider === "cpu" ? [] : (opts.device ?? (gpuVisible() || opts.executionProvider === "cuda" ? [0] : []));
      // auto on a host without a GPU is simply the CPU: nothing to warn about here.
      const executionProvider = opts.executionProvider === "auto" && deviceIds.length === 0 ? "cpu" : opts.executionProvider;
      const engine = new OnnxEngine(
        {
          executionProvider,
          deviceIds,
          modelsDir: opts.modelsDir,
          models: [opts.model],
          intraOpThreads: opts.threads,
          interOpThreads: 0,
          graphOptimizationLevel: "all",
        },
        { log },
      );
      const controller = new AbortController();
      const onSigint = (): void => controller.abort();
      process.once("SIGINT", onSigint);
      try {
        await engine.initialize();
        const params: ResolvedGenerationParameters = {
          max_new_tokens: opts.maxNewTokens,
          temperature: opts.temperature,
          top_k: opts.topK,
          top_p: opts.topP,
          repetition_penalty: opts.repetitionPenalty,
          stop: opts.stop,
          seed: opts.seed,
        };
        const result = await engine.generate({
          model: opts.model,
          prompt: opts.prompt,
          params,
          signal: controller.signal,
          ...(opts.json ? {} : { onToken: (e: { delta: string }) => void process.stdout.write(e.delta) }),
        });
        const device = engine.models()[0]?.device ?? "cpu";
        if (opts.json) {
          process.stdout.write(`${JSON.stringify({ model: opts.model, device, ...result })}\n`);
        } else {
          const t = result.timing;
          process.stdout.write("\n");
          process.stderr.write(
            `[${result.finish_reason}] ${result.usage.prompt_tokens} prompt + ${result.usage.completion_tokens} completion tokens on ${device}; ` +
              `first token ${t.time_to_first_token_ms.toFixed(0)} ms, ${t.tokens_per_second.toFixed(1)} tokens/s\n`,
          );
        }
      } finally {
        process.off("SIGINT", onSigint);
        await engine.close();
      }
    });
}

function bounded(key: keyof typeof GENERATION_BOUNDS | "threads", integer = false): (v: string) => number {
  const bounds = key === "threads" ? { min: 0, max: 256 } : (GENERATION_BOUNDS[key] as { min: number; max: number });
  return (v: string) => {
    const n = Number(v);
    if (v.trim() === "" || !Number.isFinite(n) || (integer && !Number.isInteger(n)) || n < bounds.min || n > bounds.max) {
      throw new InvalidArgumentError(`must be ${integer ? "an integer" : "a number"} from ${bounds.min} to ${bounds.max}`);
    }
    return n;
  };
}

function parseDeviceIds(v: string): number[] {
  const ids = v.split(",").map((s) => Number(s.trim()));
  if (ids.some((n) => !Number.isInteger(n) || n < 0)) throw new InvalidArgumentError("must be comma-separated GPU indices, e.g. 0,1");
  return ids;
}

/** True when nvidia-smi runs and lists at least one GPU. */
function gpuVisible(): boolean {
  try {
    return execFileSync("nvidia-smi", ["-L"], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"], timeout: 10_000 }).includes("GPU ");
  } catch {
    return false;
  }
}
