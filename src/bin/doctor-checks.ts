/**
 * What `aitbc doctor` checks (the command is src/bin/commands/doctor.ts): each check in order and
 * whether the host is healthy. Loaded only when doctor runs: the checks need onnxruntime.
 */
import { execFileSync } from "node:child_process";
import { existsSync, readdirSync, statfsSync } from "node:fs";
import path from "node:path";
import { errorMessage, toAppError } from "../common/errors.js";
import { checkCudaProvider, describeCudaProviderProblem } from "../inference/cuda-provider.js";
import { loadModelInfo, type ModelInfo } from "../inference/models/model-info.js";
import { RECIPES } from "../inference/models/recipes.js";
import { createSession } from "../inference/session-factory.js";
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
  /** The nvidia-smi the miner runs ([gpus] nvidia_smi). */
  nvidiaSmi: string;
  /** False when the miner would not use CUDA whatever it finds ([gpus] mode or [inference] execution_provider "cpu"). */
  cudaWanted: boolean;
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
 * for later checks, and returns ok / warn / fail / skip with a one-line summary.
 */
const CHECKS: DoctorCheck[] = [
  {
    name: "gpus",
    run(ctx) {
      let out: string;
      try {
        out = execFileSync(ctx.nvidiaSmi, ["--query-gpu=index,name,memory.total,driver_version", "--format=csv,noheader"], {
          encoding: "utf8",
          stdio: ["ignore", "pipe", "pipe"],
          timeout: 15_000,
        });
      } catch (err) {
        const reason = (err as NodeJS.ErrnoException).code === "ENOENT" ? `${ctx.nvidiaSmi} not found` : `${ctx.nvidiaSmi} failed: ${firstLine(errorMessage(err))}`;
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
      const needed = ctx.gpus.length > 0 && ctx.cudaWanted;
      const details = [...check.missingFiles.map((f) => `missing ${path.join(check.dir, f)}`), ...check.missingLibraries.map((l) => `not found by the loader: ${l}`)];
      if (problem !== "") return { status: needed ? "fail" : "warn", summary: problem, details };
      const model = smallest(ctx.models);
      if (!needed) return { status: "ok", summary: `CUDA provider libraries installed; ${ctx.cudaWanted ? "no GPU to try them on" : "not tried: the miner config says CPU"}` };
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

export async function runDoctor(
  modelsDir: string,
  coordinator?: { url: string; key: string },
  options: { wanted?: string[]; checkCoordinator?: boolean; nvidiaSmi?: string; cudaWanted?: boolean } = {},
): Promise<(CheckResult & { name: string })[]> {
  const ctx: DoctorContext = {
    modelsDir,
    wanted: options.wanted ?? [],
    nvidiaSmi: options.nvidiaSmi ?? "nvidia-smi",
    cudaWanted: options.cudaWanted ?? true,
    gpus: [],
    models: [],
    ...(coordinator === undefined ? {} : { coordinator }),
  };
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

export function healthy(results: CheckResult[]): boolean {
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
