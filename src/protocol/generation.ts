import { Type, type Static } from "@sinclair/typebox";

/**
 * Generation parameters a client may set on a job (`parameters` in POST /v1/jobs) and that
 * the miner hands to the engine. Bounds are enforced at the REST edge; the defaults below are
 * filled in by the coordinator at submit time, so every attempt of a job (also after a
 * requeue) runs with the same values, including the same `seed`.
 */
export const GENERATION_DEFAULTS = {
  max_new_tokens: 128,
  temperature: 0.8,
  top_k: 40,
  top_p: 0.95,
  repetition_penalty: 1.0,
} as const;

export const GENERATION_BOUNDS = {
  max_new_tokens: { min: 1, max: 4096 },
  temperature: { min: 0, max: 2 },
  top_k: { min: 0, max: 50_257 },
  top_p: { min: 0.01, max: 1 },
  repetition_penalty: { min: 0.1, max: 10 },
  stop: { maxItems: 8, maxLength: 64 },
  seed: { min: 0, max: 2 ** 31 - 1 },
} as const;

export const GenerationParametersSchema = Type.Object(
  {
    max_new_tokens: Type.Optional(
      Type.Integer({
        minimum: GENERATION_BOUNDS.max_new_tokens.min,
        maximum: GENERATION_BOUNDS.max_new_tokens.max,
        description: `Tokens to generate at most. Default ${GENERATION_DEFAULTS.max_new_tokens}.`,
      }),
    ),
    temperature: Type.Optional(
      Type.Number({
        minimum: GENERATION_BOUNDS.temperature.min,
        maximum: GENERATION_BOUNDS.temperature.max,
        description: `Sampling temperature; 0 is greedy. Default ${GENERATION_DEFAULTS.temperature}.`,
      }),
    ),
    top_k: Type.Optional(
      Type.Integer({
        minimum: GENERATION_BOUNDS.top_k.min,
        maximum: GENERATION_BOUNDS.top_k.max,
        description: `Keep the k most likely tokens; 0 disables. Default ${GENERATION_DEFAULTS.top_k}.`,
      }),
    ),
    top_p: Type.Optional(
      Type.Number({
        minimum: GENERATION_BOUNDS.top_p.min,
        maximum: GENERATION_BOUNDS.top_p.max,
        description: `Nucleus sampling mass; 1 disables. Default ${GENERATION_DEFAULTS.top_p}.`,
      }),
    ),
    repetition_penalty: Type.Optional(
      Type.Number({
        minimum: GENERATION_BOUNDS.repetition_penalty.min,
        maximum: GENERATION_BOUNDS.repetition_penalty.max,
        description: `Penalty on tokens already present (CTRL-style); 1 disables. Default ${GENERATION_DEFAULTS.repetition_penalty}.`,
      }),
    ),
    stop: Type.Optional(
      Type.Array(Type.String({ minLength: 1, maxLength: GENERATION_BOUNDS.stop.maxLength }), {
        maxItems: GENERATION_BOUNDS.stop.maxItems,
        description: "Stop sequences: generation ends before the first occurrence of any.",
      }),
    ),
    seed: Type.Optional(
      Type.Integer({
        minimum: GENERATION_BOUNDS.seed.min,
        maximum: GENERATION_BOUNDS.seed.max,
        description: "Sampling seed; the same seed gives the same output. Chosen at submit when absent.",
      }),
    ),
  },
  { additionalProperties: false, description: "How the text is sampled; every field optional, defaults filled in at submit" },
);

export type GenerationParameters = Static<typeof GenerationParametersSchema>;

/** Parameters with every default filled in: what a miner receives. */
export interface ResolvedGenerationParameters {
  max_new_tokens: number;
  temperature: number;
  top_k: number;
  top_p: number;
  repetition_penalty: number;
  stop: string[];
  seed: number;
}

export function resolveGenerationParameters(
  p: GenerationParameters | undefined,
  randomSeed: () => number,
): ResolvedGenerationParameters {
  return {
    max_new_tokens: p?.max_new_tokens ?? GENERATION_DEFAULTS.max_new_tokens,
    temperature: p?.temperature ?? GENERATION_DEFAULTS.temperature,
    top_k: p?.top_k ?? GENERATION_DEFAULTS.top_k,
    top_p: p?.top_p ?? GENERATION_DEFAULTS.top_p,
    repetition_penalty: p?.repetition_penalty ?? GENERATION_DEFAULTS.repetition_penalty,
    stop: p?.stop ?? [],
    seed: p?.seed ?? randomSeed(),
  };
}
