/** What the bench scripts share: medians, thread spinning, and building the built-in models they run. */
import { existsSync } from "node:fs";
import path from "node:path";
import { buildModel, ONNX_MODEL_PATH } from "../src/inference/models/build-model.js";
import { RECIPES } from "../src/inference/models/recipes.js";
import { decideThreadSpinning } from "../src/inference/session-factory.js";

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
