import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { buildModel } from "../../src/inference/models/build-model.js";
import { RECIPES, type ModelRecipe } from "../../src/inference/models/recipes.js";

export const TINY: ModelRecipe = RECIPES["tiny-gpt2"]!;

/** Builds tiny-gpt2 into a fresh temp models dir; returns the dirs and a cleanup. */
export async function buildTinyModel(seed?: number): Promise<{ modelsDir: string; modelDir: string; cleanup: () => void }> {
  const modelsDir = mkdtempSync(path.join(os.tmpdir(), "aitbc-models-"));
  const modelDir = path.join(modelsDir, "tiny-gpt2");
  await buildModel(TINY, modelDir, seed === undefined ? {} : { seed });
  return { modelsDir, modelDir, cleanup: () => rmSync(modelsDir, { recursive: true, force: true }) };
}
