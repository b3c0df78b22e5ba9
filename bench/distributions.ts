/** Next-token distributions as the bench compares them: log-probabilities over the vocabulary. */

/** Smallest probability taken from an engine that reports probabilities (its zeros are underflow). */
const MIN_PROBABILITY = 1e-30;

/** Log-probabilities in doubles (KL over many positions is summed from these). */
export function logSoftmax64(logits: Float32Array): Float64Array {
  let max = -Infinity;
  for (const x of logits) max = Math.max(max, x);
  let sum = 0;
  for (const x of logits) sum += Math.exp(x - max);
  const lse = max + Math.log(sum);
  return Float64Array.from(logits, (x) => x - lse);
}

/** Log-probabilities stored as floats (each rounded from its double, as computed). */
export function logSoftmax(logits: Float32Array): Float32Array {
  return Float32Array.from(logSoftmax64(logits));
}

/** Log-probabilities from a token → probability map (node-llama-cpp's), tokens it leaves out at the floor. */
export function logProbsOf(probabilities: Map<number, number>, vocabSize: number): Float32Array {
  const out = new Float32Array(vocabSize).fill(Math.log(MIN_PROBABILITY));
  for (const [token, p] of probabilities) if (token < vocabSize) out[token] = Math.log(Math.max(p, MIN_PROBABILITY));
  return out;
}

/** The two most likely tokens with their log-probabilities, most likely first. */
export function top2(logProbs: Float32Array): [[number, number], [number, number]] {
  let a = 0;
  let b = -1;
  for (let i = 1; i < logProbs.length; i++) {
    if (logProbs[i]! > logProbs[a]!) {
      b = a;
      a = i;
    } else if (b < 0 || logProbs[i]! > logProbs[b]!) b = i;
  }
  return [
    [a, logProbs[a]!],
    [b, logProbs[b]!],
  ];
}

export function argmax(xs: Float32Array): number {
  return top2(xs)[0][0];
}

/** KL(p ‖ q) in nats, from log-probabilities. */
export function klDivergence(logP: ArrayLike<number>, logQ: ArrayLike<number>): number {
  let kl = 0;
  for (let i = 0; i < logP.length; i++) {
    const lp = logP[i]!;
    kl += Math.exp(lp) * (lp - logQ[i]!);
  }
  return kl;
}

/** Largest |a − b| over the vocabulary, leaving out tokens both sides put below `floor` (an engine that reports probabilities may round those to 0). */
export function maxAbsDiff(a: Float32Array, b: Float32Array, floor = 1e-30): number {
  const lf = Math.log(floor);
  let max = 0;
  for (let i = 0; i < a.length; i++) if (a[i]! >= lf || b[i]! >= lf) max = Math.max(max, Math.abs(a[i]! - b[i]!));
  return max;
}
