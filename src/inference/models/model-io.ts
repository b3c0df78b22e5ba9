/**
 * The names of a GPT-2 decoder graph's inputs and outputs, in Hugging Face optimum's layout
 * (what transformers.js and real exports use) plus our graphs' `new_key_values`. The graph
 * builder, the model checker and the decoder all name tensors through this module.
 */

export const INPUT_IDS = "input_ids";
/** [B, P+S] int64, 0 for padding: left padding works, so rows of one batch may differ in length. */
export const ATTENTION_MASK = "attention_mask";
/** [B, S] int64; optional in optimum's layout (without it a batch cannot hold rows of different lengths). */
export const POSITION_IDS = "position_ids";
/** [1] bool; only in merged decoders exported with an If between the first step and the others. */
export const USE_CACHE_BRANCH = "use_cache_branch";
export const LOGITS = "logits";

/** The cache a step reads: past_key_values.{i}.key|value, [B, H, P, D]. */
export const PAST = "past_key_values";
/** The cache a step returns, past and the step's own entries: present.{i}.key|value, [B, H, P+S, D]. */
export const PRESENT = "present";
/**
 * Only the step's own keys and values, [B, H, S, D]: our graphs' extra outputs, which
 * `present` holds after the past. An engine that keeps its own cache asks for these instead
 * of `present`, so that a step copies out S positions rather than the whole cache
 * (onnxruntime-node copies every fetched output into a new JS buffer). Named so that
 * consumers of optimum's layout, which read outputs starting with "present", ignore them.
 */
export const NEW_KEY_VALUES = "new_key_values";

export type KvPrefix = typeof PAST | typeof PRESENT | typeof NEW_KEY_VALUES;
export type KvPart = "key" | "value";
export const KV_PARTS: readonly KvPart[] = ["key", "value"];

/** `<prefix>.<layer>.<part>`, e.g. past_key_values.0.key. */
export function kvName(prefix: KvPrefix, layer: number, part: KvPart): string {
  return `${prefix}.${layer}.${part}`;
}

/** Every layer's key and value names under one prefix, layer by layer, key before value. */
export function kvNames(prefix: KvPrefix, nLayer: number): string[] {
  const names: string[] = [];
  for (let i = 0; i < nLayer; i++) for (const part of KV_PARTS) names.push(kvName(prefix, i, part));
  return names;
}

/** The inputs a decoder graph may have besides its past: the first two are required. */
export const STEP_INPUTS: readonly string[] = [INPUT_IDS, ATTENTION_MASK, POSITION_IDS, USE_CACHE_BRANCH];

/** Layer and part of a `past_key_values.{i}.key|value` name; undefined for any other name. */
export function parsePastName(name: string): { layer: number; part: KvPart } | undefined {
  const m = /^past_key_values\.(\d+)\.(key|value)$/.exec(name);
  return m === null ? undefined : { layer: Number(m[1]), part: m[2] as KvPart };
}
