import { execFileSync } from "node:child_process";
import { existsSync, readdirSync, statfsSync } from "node:fs";
import path from "node:path";
import type { Command } from "commander";
import { errorMessage, toAppError } from "../../common/errors.js";
import { checkCudaProvider, describeCudaProviderProblem } from "../../inference/cuda-provider.js";
import { loadModelInfo, type ModelInfo } from "../../inference/models/model-info.js";
import { RECIPES } from "../../inference/models/recipes.js";
import { createSession } from "../../inference/session-factory.js";
import { loadMinerConfig } from "../../miner/config.js";
import { WebSocket } from "ws";

/**
 * What one check found: "warn" is worth knowing but does not make the host unhealthy; "skip":
 * the check could not run (what it needs is missing), so the host is not known to be healthy.
 */
export interface CheckResult {
  status: "ok" | "warn" | "fail" | "skip";
  summary: string;
  details?: string[];
}

/** What checks may look at; filled by earlier checks (GPUs seen, valid models) for later ones. */
interface DoctorContext {
  modelsDir: string;
  /** The models the miner loads at start ([inference] models); each must be valid. */
  wanted: string[];
  /** The miner's coordinator and key, when a miner config (or flags) names them. */
  coordinator?: { url: string; key: string };
  gpus: string[];
  models: ModelInfo[];
}

interface DoctorCheck {
  name: string;
  run(ctx: DoctorContext): Promise<CheckResult> | CheckResult;
}

const MIN_FREE_BYTES = 1 << 30;

/**
 * The checks, in order. Adding one is adding an entry: it reads the context, may extend it
 * for later checks, and returns ok / warn / fail with a one-line summary.
 */
const CHECKS: DoctorCheck[] = [
  {
    name: "gpus",
    run(ctx) {
      let out: string;
      try {
        out = execFileSync("nvidia-smi", ["--query-gpu=index,name,memory.total,driver_version", "--format=csv,noheader"], {
          encoding: "utf8",
          stdio: ["ignore", "pipe", "pipe"],
          timeout: 15_000,
        });
      } catch (err) {
        const reason = (err as NodeJS.ErrnoException).code === "ENOENT" ? "nvidia-smi not found" : `nvidia-smi failed: ${firstLine(errorMessage(err))}`;
        return { status: "warn", summary: `no NVIDIA GPU seen (${reason}); the miner runs on the CPU` };
      }
      ctx.gpus = out.split("\n").map((l) => l.trim()).filter((l) => l !== "");
      if (ctx.gpus.length === 0) return { status: "warn", summary: "nvidia-smi lists no GPU; the miner runs on the CPU" };
      return { status: "ok", summary: `${ctx.gpus.length} GPU(s)`, details: ctx.gpus };
    },
  },
  {
    name: "models",
    run(ctx) {
      if (!existsSync(ctx.modelsDir)) {
        return { status: "fail", summary: `models dir ${ctx.modelsDir} does not exist (${getModelHint(ctx.wanted[0] ?? "tiny-gpt2", ctx.modelsDir)})` };
      }
      const details: string[] = [];
      let bad = 0;
      for (const entry of readdirSync(ctx.modelsDir, { withFileTypes: true })) {
        if (!entry.isDirectory()) continue;
        try {
          const info = loadModelInfo(path.join(ctx.modelsDir, entry.name));
          ctx.models.push(info);
          details.push(`${info.name}: ok (${info.nLayer} layers, ${info.nEmbd} wide, ${(info.sizeBytes / 1e6).toFixed(0)} MB)`);
        } catch (err) {
          bad++;
          details.push(`${entry.name}: ${toAppError(err).message}`);
        }
      }
      const missing = ctx.wanted.filter((name) => !ctx.models.some((m) => m.name === name));
      for (const name of missing) details.push(`${name}: configured in [inference] models but not valid here (${getModelHint(name, ctx.modelsDir)})`);
      if (ctx.models.length === 0) return { status: "fail", summary: `no valid model in ${ctx.modelsDir} (${getModelHint(ctx.wanted[0] ?? "tiny-gpt2", ctx.modelsDir)})`, details };
      if (missing.length > 0) return { status: "fail", summary: `the miner would not start: ${missing.join(", ")} missing or invalid`, details };
      return { status: bad > 0 ? "warn" : "ok", summary: `${ctx.models.length} valid model(s)${bad > 0 ? `, ${bad} invalid` : ""}`, details };
    },
  },
  {
    name: "onnxruntime-cpu",
    async run(ctx) {
      const model = smallest(ctx.models);
      if (model === undefined) return { status: "skip", summary: "not checked: no valid model to load" };
      try {
        const { session } = await createSession(model.onnxPath, { kind: "cpu" }, settings("cpu"));
        await session.release();
        return { status: "ok", summary: `a CPU session loads (${model.name})` };
      } catch (err) {
        return { status: "fail", summary: `a CPU session does not load: ${firstLine(errorMessage(err))}` };
      }
    },
  },
  {
    name: "cuda-provider",
    async run(ctx) {
      const check = checkCudaProvider();
      const problem = describeCudaProviderProblem(check);
      const needed = ctx.gpus.length > 0;
      const details = [...check.missingFiles.map((f) => `missing ${path.join(check.dir, f)}`), ...check.missingLibraries.map((l) => `not found by the loader: ${l}`)];
      if (problem !== "") return { status: needed ? "fail" : "warn", summary: problem, details };
      const model = smallest(ctx.models);
      if (!needed) return { status: "ok", summary: "CUDA provider libraries installed; no GPU to try them on" };
      if (model === undefined) return { status: "skip", summary: "CUDA provider libraries installed; not tried: no valid model to load" };
      try {
        const { session, device } = await createSession(model.onnxPath, { kind: "cuda", deviceId: 0 }, settings("cuda"));
        await session.release();
        return { status: "ok", summary: `CUDA provider loads (${model.name} on ${device})` };
      } catch (err) {
        const e = toAppError(err);
        return { status: "fail", summary: `CUDA provider does not load: ${typeof e.details?.reason === "string" ? e.details.reason : e.message}` };
      }
    },
  },
  {
    name: "coordinator",
    async run(ctx) {
      if (ctx.coordinator === undefined) {
        return {
          status: "skip",
          summary: "not checked: no miner key (set [coordinator] key_file in the miner config given with -c, pass --key-file FILE, or --no-coordinator to check the host only)",
        };
      }
      const { url, key } = ctx.coordinator;
      const outcome = await new Promise<CheckResult>((resolve) => {
        const ws = new WebSocket(url, { headers: { authorization: `Bearer ${key}` }, handshakeTimeout: 5_000 });
        ws.on("open", () => {
          ws.close(1000, "doctor");
          resolve({ status: "ok", summary: `${url} accepts this miner key` });
        });
        ws.on("unexpected-response", (_req, res) => {
          ws.terminate();
          resolve({ status: "fail", summary: `${url} refused the connection: HTTP ${res.statusCode ?? "?"}${res.statusCode === 401 ? " (the miner key is not valid)" : ""}` });
        });
        ws.on("error", (err) => resolve({ status: "fail", summary: `${url} is not reachable: ${firstLine(err.message)}` }));
      });
      return outcome;
    },
  },
  {
    name: "disk",
    run(ctx) {
      const dir = existsSync(ctx.modelsDir) ? ctx.modelsDir : ".";
      const s = statfsSync(dir);
      const free = s.bavail * s.bsize;
      const summary = `${(free / 2 ** 30).toFixed(1)} GiB free under ${path.resolve(dir)}`;
      return { status: free < MIN_FREE_BYTES ? "warn" : "ok", summary };
    },
  },
];

/**
 * `aitbc doctor`: is this host ready to mine? GPUs seen, the configured models valid, onnxruntime
 * loads on the CPU and (where there is a GPU) with the CUDA provider, naming the missing library
 * when not; the coordinator accepts the miner key; disk space. Exit code 0 when nothing failed
 * and nothing it needs was skipped, 1 otherwise.
 */
export function registerDoctorCommand(program: Command): void {
  program
    .command("doctor")
    .description("check this host: GPUs, CUDA provider, models, coordinator and key, disk")
    .option("--models-dir <dir>", "folder that holds model folders (default: the config's [inference] models_dir)")
    .option("--json", "print JSON instead of text", false)
    .option("-c, --config <file>", "miner config whose models, coordinator and key to check", "config/miner.toml")
    .option("--coordinator <url>", "coordinator URL (overrides the config's)")
    .option("--key-file <file>", "file holding the miner key, relative to the working directory (overrides the config's)")
    .option("--no-coordinator", "check this host only: no coordinator and key check")
    .addHelpText("after", "\nExit 1 when a check failed or one it needs could not run (SKIP: e.g. no miner key; pass --no-coordinator for a host-only check).")
    .action(async (opts: { modelsDir?: string; json: boolean; config: string; coordinator?: string | false; keyFile?: string }, cmd: Command) => {
      const checkCoordinator = opts.coordinator !== false;
      const miner = loadMinerConfig({
        file: opts.config,
        optional: cmd.getOptionValueSource("config") !== "cli",
        overrides: {
          "coordinator.url": typeof opts.coordinator === "string" ? opts.coordinator : undefined,
          // A flag's path is relative to the working directory (a path in the file, to the file).
          "coordinator.key_file": opts.keyFile === undefined ? undefined : path.resolve(opts.keyFile),
        },
      });
      const coordinator = miner.coordinator.key === "" ? undefined : { url: miner.coordinator.url, key: miner.coordinator.key };
      const results = await runDoctor(opts.modelsDir ?? miner.inference.models_dir, coordinator, { wanted: miner.inference.models, checkCoordinator });
      if (opts.json) {
        process.stdout.write(`${JSON.stringify({ healthy: healthy(results), checks: results }, null, 2)}\n`);
      } else {
        for (const r of results) {
          process.stdout.write(`${r.status.toUpperCase().padEnd(4)}  ${r.name.padEnd(16)} ${r.summary}\n`);
          for (const d of r.details ?? []) process.stdout.write(`      ${"".padEnd(16)} ${d}\n`);
        }
      }
      process.exitCode = healthy(results) ? 0 : 1;
    });
}

export async function runDoctor(
  modelsDir: string,
  coordinator?: { url: string; key: string },
  options: { wanted?: string[]; checkCoordinator?: boolean } = {},
): Promise<(CheckResult & { name: string })[]> {
  const ctx: DoctorContext = { modelsDir, wanted: options.wanted ?? [], gpus: [], models: [], ...(coordinator === undefined ? {} : { coordinator }) };
  const results: (CheckResult & { name: string })[] = [];
  for (const check of CHECKS) {
    if (check.name === "coordinator" && options.checkCoordinator === false) continue;
    try {
      results.push({ name: check.name, ...(await check.run(ctx)) });
    } catch (err) {
      results.push({ name: check.name, status: "fail", summary: `check failed: ${firstLine(errorMessage(err))}` });
    }
  }
  return results;
}

function healthy(results: CheckResult[]): boolean {
  return results.every((r) => r.status === "ok" || r.status === "warn");
}

/** How to get a model: build it when it is a built-in recipe, else pull an export under that name. */
function getModelHint(name: string, modelsDir: string): string {
  const dir = path.resolve(modelsDir) === path.resolve("models") ? "" : ` --models-dir ${modelsDir}`;
  return Object.hasOwn(RECIPES, name) ? `aitbc models build ${name}${dir}` : `aitbc models pull REPO --name ${name}${dir}`;
}

function smallest(models: ModelInfo[]): ModelInfo | undefined {
  return [...models].sort((a, b) => a.sizeBytes - b.sizeBytes)[0];
}

function settings(ep: "cpu" | "cuda") {
  return { executionProvider: ep, intraOpThreads: 1, interOpThreads: 1, graphOptimizationLevel: "basic" } as const;
}

function firstLine(s: string): string {
  return (s.replace(/\u001b\[[0-9;]*m/g, "").split("\n")[0] ?? "").trim();
}
