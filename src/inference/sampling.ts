import type { Prng } from "../common/prng.js";
/**
 * Choosing the next token from one position's logits. Pure functions over Float32Array with a
 * seeded PRNG, so the same seed gives the same output and tests can check the distribution by
 * hand. The order matches Hugging Face's logits processors: repetition penalty, then
 * temperature, top-k, top-p; temperature 0 is greedy (argmax after the penalty).
 */
export interface SamplingParams {
  temperature: number;
  /** Keep the k most likely tokens; 0 disables. */
  top_k: number;
  /** Keep the smallest set of tokens whose probability reaches p; 1 disables. */
  top_p: number;
  /** CTRL-style penalty on tokens already in the sequence; 1 disables. */
  repetition_penalty: number;
}

/** Tokens that may be drawn and their probabilities (summing to 1), most likely first. */
export interface Candidates {
  ids: Int32Array;
  probs: Float64Array;
}

/**
 * Applies the repetition penalty in place to `logits` for every distinct id in `seen`:
 * positive logits are divided by the penalty, negative ones multiplied (as in CTRL / HF).
 */
export function applyRepetitionPenalty(logits: Float32Array, seen: Iterable<number>, penalty: number): void {
  if (penalty === 1) return;
  const done = new Set<number>();
  for (const id of seen) {
    if (done.has(id) || id < 0 || id >= logits.length) continue;
    done.add(id);
    const v = logits[id] as number;
    logits[id] = v > 0 ? v / penalty : v * penalty;
  }
}

export function argmax(logits: Float32Array): number {
  let best = 0;
  let bestValue = -Infinity;
  for (let i = 0; i < logits.length; i++) {
    const v = logits[i] as number;
    if (v > bestValue) {
      bestValue = v;
      best = i;
    }
  }
  return best;
}

/**
 * The distribution sampling draws from, after temperature (> 0), top-k and top-p. Works on
 * logits that already carry the repetition penalty. Ties are ordered by token id so the result
 * does not depend on sort stability.
 */
export function candidateDistribution(logits: Float32Array, params: Pick<SamplingParams, "temperature" | "top_k" | "top_p">): Candidates {
  const k = params.top_k > 0 ? Math.min(params.top_k, logits.length) : logits.length;
  const order = topIndices(logits, k);
  const maxLogit = logits[order[0] as number] as number;
  const weights = new Float64Array(order.length);
  let sum = 0;
  for (let i = 0; i < order.length; i++) {
    const w = Math.exp(((logits[order[i] as number] as number) - maxLogit) / params.temperature);
    weights[i] = w;
    sum += w;
  }
  // top-p: the smallest prefix (most likely first) whose mass reaches p; always at least one token.
  let keep = order.length;
  if (params.top_p < 1) {
    let cumulative = 0;
    for (let i = 0; i < order.length; i++) {
      cumulative += (weights[i] as number) / sum;
      if (cumulative >= params.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  let kept = 0;
  for (let i = 0; i < keep; i++) kept += weights[i] as number;
  const probs = new Float64Array(keep);
  for (let i = 0; i < keep; i++) probs[i] = (weights[i] as number) / kept;
  return { ids: Int32Array.from(order.subarray(0, keep)), probs };
}

/** Draws one id from `candidates` with a uniform number from `random`. */
export function drawFrom(candidates: Candidates, random: Prng): number {
  const u = random.next();
  let cumulative = 0;
  for (let i = 0; i < candidates.probs.length; i++) {
    cumulative += candidates.probs[i] as number;
    if (u < cumulative) return candidates.ids[i] as number;
  }
  // Rounding left the sum a hair under 1: the last candidate takes the remainder.
  return candidates.ids[candidates.ids.length - 1] as number;
}

/**
 * The next token: repetition penalty over `seen` (prompt and generated ids), then greedy when
 * temperature is 0, else a draw from {@link candidateDistribution}. Modifies `logits`.
 */
export function sampleNextToken(logits: Float32Array, seen: Iterable<number>, params: SamplingParams, random: Prng): number {
  applyRepetitionPenalty(logits, seen, params.repetition_penalty);
  if (params.temperature <= 0) return argmax(logits);
  return drawFrom(candidateDistribution(logits, params), random);
}

/** Indices of the k largest values, largest first (ties: lower index first). */
function topIndices(values: Float32Array, k: number): Int32Array {
  const byValue = (a: number, b: number): number => (values[b] as number) - (values[a] as number) || a - b;
  if (k >= values.length / 4) {
    const all = new Int32Array(values.length);
    for (let i = 0; i < all.length; i++) all[i] = i;
    all.sort(byValue);
    return all.subarray(0, k);
  }
  // Small k: keep a sorted buffer of the best k seen so far; cheap when k is much below the vocabulary.
  const best = new Int32Array(k);
  let n = 0;
  for (let i = 0; i < values.length; i++) {
    const v = values[i] as number;
    if (n === k && v <= (values[best[k - 1] as number] as number)) continue;
    let j = n < k ? n++ : k - 1;
    while (j > 0 && byValue(best[j - 1] as number, i) > 0) {
      best[j] = best[j - 1] as number;
      j--;
    }
    best[j] = i;
  }
  return best.subarray(0, n);
}
