/** What the bench scripts share: medians, thread spinning, the built-in models they run, a coordinator child process, CPU times from /proc. */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { existsSync, readFileSync, readdirSync } from "node:fs";
import { createServer } from "node:net";
import path from "node:path";
import { buildModel, ONNX_MODEL_PATH } from "../src/inference/models/build-model.js";
import { RECIPES } from "../src/inference/models/recipes.js";
import { decideThreadSpinning } from "../src/inference/session-factory.js";

/** The prompts the inference benches decode (bench:inference's three; bench:int8 adds one). */
export const DECODE_PROMPTS: readonly string[] = [
  "The history of the city begins in the early years of the",
  "In a shocking finding, scientists discovered a herd of unicorns living in a remote valley",
  "def fibonacci(n):\n    if n < 2:\n        return n\n",
];

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/**
 * Builds `<modelsDir>/<name>` when it is missing: `name` is a recipe, or a recipe with "-int8"
 * for its int8 weights (what `aitbc models build <recipe> [--weights int8]` names them).
 */
export async function ensureModel(modelsDir: string, name: string): Promise<void> {
  const dir = path.join(modelsDir, name);
  if (existsSync(path.join(dir, ONNX_MODEL_PATH))) return;
  const int8 = name.endsWith("-int8");
  const recipe = RECIPES[int8 ? name.slice(0, -"-int8".length) : name];
  if (recipe === undefined) throw new Error(`${name} is missing and has no recipe to build it`);
  process.stderr.write(`building ${name} (once)…\n`);
  await buildModel(recipe, dir, { weights: int8 ? "int8" : "float32" });
}

/** BENCH_SPIN=0|1: our engine's intra-op threads spin or not; unset, the engine's default "auto". */
export function benchSpin(): boolean | "auto" {
  return process.env.BENCH_SPIN === "0" ? false : process.env.BENCH_SPIN === "1" ? true : "auto";
}

/**
 * The environment for a bench's child processes, with BENCH_SPIN decided once, when called,
 * as the engine decides "auto" (other processes' CPU use, measured now): the children all run
 * alike, and none measures the load of another side. Call it before the bench loads the CPUs.
 */
export async function childEnv(): Promise<NodeJS.ProcessEnv> {
  return { ...process.env, BENCH_SPIN: (await decideThreadSpinning(benchSpin())).spinning ? "1" : "0" };
}

const ROOT = path.resolve(import.meta.dirname, "..");

/** A port nothing listens on right now (bound on port 0, then released). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      const port = typeof addr === "object" && addr !== null ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

/** `node --import tsx <args>` in the repository root, stderr inherited. */
export function tsx(args: string[], env: NodeJS.ProcessEnv = {}, stdout: "pipe" | "ignore" = "pipe", stdin: "pipe" | "ignore" = "ignore"): ChildProcess {
  return spawn(process.execPath, ["--import", "tsx", ...args], { cwd: ROOT, env: { ...process.env, ...env }, stdio: [stdin, stdout, "inherit"] });
}

/** `aitbc coordinator` from the sources on a free port over `dataDir`; resolves once /readyz answers. */
export async function startCoordinator(dataDir: string, env: NodeJS.ProcessEnv = {}, logLevel = "warn"): Promise<{ child: ChildProcess; url: string }> {
  const port = await freePort();
  const child = tsx([path.join(ROOT, "src/bin/aitbc.ts"), "coordinator", "--port", String(port), "--data-dir", dataDir, "--log-level", logLevel], env);
  child.stdout?.resume();
  const url = `http://127.0.0.1:${port}`;
  for (let i = 0; i < 300; i++) {
    if (child.exitCode !== null) throw new Error(`coordinator exited with ${child.exitCode}`);
    if (await fetch(`${url}/readyz`).then((r) => r.ok, () => false)) return { child, url };
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error("coordinator did not become ready");
}

/** SIGTERM, then waits for the exit. */
export async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null) return;
  const exited = new Promise((resolve) => child.once("exit", resolve));
  child.kill("SIGTERM");
  await exited;
}

/** Clock ticks per second of /proc's CPU times. */
export const CLK_TCK = Number(spawnSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).stdout.trim()) || 100;

/** CPU seconds (user + system) the process has used so far; 0 once it is gone. */
export function cpuSeconds(pid: number): number {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  } catch {
    return 0;
  }
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // Fields after "(comm) ": state is [0]; utime is field 14 of the whole line, so [11]; stime [12].
  return (Number(fields[11]) + Number(fields[12])) / CLK_TCK;
}

/** The pids of every process on the host whose command name is `comm` (e.g. "postgres"). */
export function pidsNamed(comm: string): number[] {
  const out: number[] = [];
  for (const d of readdirSync("/proc")) {
    if (!/^\d+$/.test(d)) continue;
    try {
      if (readFileSync(`/proc/${d}/comm`, "utf8").trim() === comm) out.push(Number(d));
    } catch {
      // Gone meanwhile.
    }
  }
  return out;
}

/** Busy CPU seconds of the whole host so far (every process, anyone's). */
export function hostBusySeconds(): number {
  const f = readFileSync("/proc/stat", "utf8").split("\n")[0]!.trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal
  return (f[0]! + f[1]! + f[2]! + f[5]! + f[6]! + f[7]!) / CLK_TCK;
}

/** This process's CPU seconds so far (user + system). */
export function ownCpuSeconds(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}
