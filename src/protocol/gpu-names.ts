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

/** Whether `wanted` tokens occur in `actual` in order, each as a run of consecutive tokens. */
function matchesInOrder(wanted: string[], actual: string[]): boolean {
  const step = (wi: number, ai: number): boolean => {
    if (wi === wanted.length) return true;
    const want = wanted[wi]!;
    for (let start = ai; start < actual.length; start++) {
      let glued = "";
      for (let end = start; end < actual.length; end++) {
        glued += actual[end]!;
        if (glued.length > want.length || !want.startsWith(glued)) break;
        if (glued === want && step(wi + 1, end + 1)) return true;
      }
    }
    return false;
  };
  return step(0, 0);
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
