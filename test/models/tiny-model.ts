import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { buildModel } from "../../src/inference/models/build-model.js";
import type { GraphLayout, WeightFormat } from "../../src/inference/models/gpt2-graph.js";
import { RECIPES, type ModelRecipe } from "../../src/inference/models/recipes.js";

export const TINY: ModelRecipe = RECIPES["tiny-gpt2"]!;

/**
 * Builds tiny-gpt2 into a fresh temp models dir (as "tiny-gpt2", or "tiny-gpt2-int8" with int8
 * weights), as `aitbc models build` would unless `layout` says "optimum"; returns the dirs and a cleanup.
 */
export async function buildTinyModel(
  options: { seed?: number; weights?: WeightFormat; layout?: GraphLayout } = {},
): Promise<{ modelsDir: string; modelDir: string; cleanup: () => void }> {
  const { seed, weights = "float32", layout = "aitbc" } = options;
  const modelsDir = mkdtempSync(path.join(os.tmpdir(), "aitbc-models-"));
  const modelDir = path.join(modelsDir, weights === "float32" ? "tiny-gpt2" : `tiny-gpt2-${weights}`);
  await buildModel(TINY, modelDir, { ...(seed === undefined ? {} : { seed }), weights, layout });
  return { modelsDir, modelDir, cleanup: () => rmSync(modelsDir, { recursive: true, force: true }) };
}
