/**
 * GPU names for matching a job's `requirements.gpu_type` against what a miner's driver
 * reports. People write "v100", "RTX 4090", "rtx4090", "4090", "a100 80gb"; drivers say
 * "Tesla V100-SXM2-16GB", "NVIDIA GeForce RTX 4090", "NVIDIA A100-SXM4-80GB".
 *
 * Rule: both names are lower-cased and split into alphanumeric tokens; brand words (nvidia,
 * tesla, geforce, quadro, amd) are dropped. The request matches when each of its tokens, in
 * order, equals one token of the actual name or several consecutive ones glued together
 * ("rtx4090" = "rtx" + "4090"). Tokens are compared whole, so "a10" does not match "A100" and
 * "h100" does not match "H200"; "a100 40gb" does not match "A100-SXM4-80GB".
 * A request made only of brand words ("nvidia") matches names that contain those words.
 */
const BRAND_WORDS = new Set(["nvidia", "tesla", "geforce", "quadro", "amd"]);

/** Lower-case alphanumeric tokens of a name, brand words included. */
export function gpuNameTokens(name: string): string[] {
  return name
    .toLowerCase()
    .split(/[^a-z0-9]+/)
    .filter((t) => t.length > 0);
}

function withoutBrands(tokens: string[]): string[] {
  return tokens.filter((t) => !BRAND_WORDS.has(t));
}

/** A compact key for display and tables: "NVIDIA GeForce RTX 4090" → "rtx4090", "NVIDIA H200" → "h200". */
export function normaliseGpuName(name: string): string {
  const tokens = gpuNameTokens(name);
  const kept = withoutBrands(tokens);
  return (kept.length > 0 ? kept : tokens).join("");
}

/**
 * Where the run of `actual` tokens starting at `start` glues to exactly `want`: the index after
 * the run's last token, or -1. Tokens are non-empty, so at most `want.length` tokens are read.
 */
function runEnd(want: string, actual: readonly string[], start: number): number {
  let offset = 0;
  for (let i = start; i < actual.length; i++) {
    const t = actual[i]!;
    if (!want.startsWith(t, offset)) return -1;
    offset += t.length;
    if (offset === want.length) return i + 1;
  }
  return -1;
}

/**
 * Whether `wanted` tokens occur in `actual` in order, each as a run of consecutive tokens.
 * Greedy: each wanted token takes the run that ends first, which leaves the most room for the
 * rest (any later-ending choice can be swapped for it). No backtracking, so the cost is at most
 * actual.length × (total wanted characters) character comparisons, whatever the names are; a
 * backtracking search was exponential in the number of words (a miner's GPU name of a few dozen
 * short words against a request of a dozen ran for minutes).
 */
function matchesInOrder(wanted: readonly string[], actual: readonly string[]): boolean {
  let pos = 0;
  for (const want of wanted) {
    let best = -1;
    // A run starting at or after `best` cannot end before it.
    for (let start = pos; start < actual.length && (best === -1 || start < best); start++) {
      const end = runEnd(want, actual, start);
      if (end !== -1 && (best === -1 || end < best)) best = end;
    }
    if (best === -1) return false;
    pos = best;
  }
  return true;
}

/**
 * Whether a requested GPU type (from a job's requirements) names the GPU a miner reported.
 * Pure; the coordinator's matcher calls it per GPU.
 */
export function gpuMatches(requested: string, actualName: string): boolean {
  const reqAll = gpuNameTokens(requested);
  if (reqAll.length === 0) return false;
  const actAll = gpuNameTokens(actualName);
  const req = withoutBrands(reqAll);
  if (req.length === 0) return matchesInOrder(reqAll, actAll);
  return matchesInOrder(req, withoutBrands(actAll));
}
