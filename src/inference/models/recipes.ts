import type { Gpt2Config, Gpt2Init } from "./gpt2-weights.js";

/** A built-in model: a GPT-2 shape, how to draw its random weights, and a default seed. */
export interface ModelRecipe {
  name: string;
  description: string;
  config: Gpt2Config;
  init: Gpt2Init;
  defaultSeed: number;
}

const GPT2_TOKENS = { vocabSize: 50_257, bosTokenId: 50_256, eosTokenId: 50_256 } as const;

/**
 * tiny-gpt2 (≈1.7M parameters, ≈7 MB) is what tests and `npm start` use; its weight scales
 * are large so that the top logits are well apart and greedy decoding does not hinge on
 * float rounding. gpt2-124m-random has exactly gpt2-small's shape (≈500 MB) for benchmarks.
 */
export const RECIPES: Readonly<Record<string, ModelRecipe>> = {
  "tiny-gpt2": {
    name: "tiny-gpt2",
    description: "2 layers, 4 heads, 32 wide, GPT-2 vocabulary: for tests and first start",
    config: { nLayer: 2, nHead: 4, nEmbd: 32, nPositions: 1024, ...GPT2_TOKENS },
    init: { wteStd: 1.0, wpeStd: 0.5, weightStd: 0.3, projStd: 0.3, biasStd: 0.05, lnStd: 0.1 },
    defaultSeed: 42,
  },
  "gpt2-124m-random": {
    name: "gpt2-124m-random",
    description: "gpt2-small's exact shape (124M parameters) with random weights: for benchmarks",
    config: { nLayer: 12, nHead: 12, nEmbd: 768, nPositions: 1024, ...GPT2_TOKENS },
    init: { wteStd: 0.1, wpeStd: 0.05, weightStd: 0.05, projStd: 0.02, biasStd: 0.01, lnStd: 0.05 },
    defaultSeed: 42,
  },
};

export function recipeNames(): string[] {
  return Object.keys(RECIPES);
}
