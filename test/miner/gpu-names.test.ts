import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { gpuMatches, normaliseGpuName } from "../../src/protocol/gpu-names.js";

describe("gpuMatches", () => {
  const yes: [string, string][] = [
    ["v100", "Tesla V100-SXM2-16GB"],
    ["V100", "Tesla V100-PCIE-32GB"],
    ["tesla v100", "Tesla V100-SXM2-16GB"],
    ["h200", "NVIDIA H200"],
    ["H200", "NVIDIA H200 NVL"],
    ["rtx4090", "NVIDIA GeForce RTX 4090"],
    ["RTX 4090", "NVIDIA GeForce RTX 4090"],
    ["rtx-4090", "NVIDIA GeForce RTX 4090"],
    ["4090", "NVIDIA GeForce RTX 4090"],
    ["geforce rtx 4090", "NVIDIA GeForce RTX 4090"],
    ["a100", "NVIDIA A100-SXM4-80GB"],
    ["a100 80gb", "NVIDIA A100-SXM4-80GB"],
    ["A100-SXM4-80GB", "NVIDIA A100-SXM4-80GB"],
    ["nvidia", "NVIDIA H200"],
  ];
  const no: [string, string][] = [
    ["v100", "NVIDIA A100-SXM4-80GB"],
    ["a10", "NVIDIA A100-SXM4-80GB"],
    ["h100", "NVIDIA H200"],
    ["4080", "NVIDIA GeForce RTX 4090"],
    ["rtx4090", "NVIDIA GeForce RTX 3090"],
    ["a100 40gb", "NVIDIA A100-SXM4-80GB"],
    ["409", "NVIDIA GeForce RTX 4090"],
    ["", "NVIDIA H200"],
    ["  ", "NVIDIA H200"],
    ["amd", "NVIDIA H200"],
  ];
  it.each(yes)("%s matches %s", (req, actual) => expect(gpuMatches(req, actual)).toBe(true));
  it.each(no)("%s does not match %s", (req, actual) => expect(gpuMatches(req, actual)).toBe(false));
});

describe("normaliseGpuName", () => {
  it("drops brand words and separators", () => {
    expect(normaliseGpuName("NVIDIA GeForce RTX 4090")).toBe("rtx4090");
    expect(normaliseGpuName("NVIDIA H200")).toBe("h200");
    expect(normaliseGpuName("Tesla V100-SXM2-16GB")).toBe("v100sxm216gb");
    expect(normaliseGpuName("NVIDIA")).toBe("nvidia");
  });
});

/** The old rule as a plain search over every way to place the runs (memoised), to check the greedy match against. */
function referenceMatch(requested: string, actual: string): boolean {
  const tokens = (s: string): string[] => s.toLowerCase().split(/[^a-z0-9]+/).filter((t) => t.length > 0);
  const brands = new Set(["nvidia", "tesla", "geforce", "quadro", "amd"]);
  const reqAll = tokens(requested);
  if (reqAll.length === 0) return false;
  const actAll = tokens(actual);
  const req = reqAll.filter((t) => !brands.has(t));
  const [w, a] = req.length === 0 ? [reqAll, actAll] : [req, actAll.filter((t) => !brands.has(t))];
  const memo = new Map<string, boolean>();
  const step = (wi: number, ai: number): boolean => {
    if (wi === w.length) return true;
    const k = `${wi}:${ai}`;
    const hit = memo.get(k);
    if (hit !== undefined) return hit;
    let ok = false;
    for (let s = ai; s < a.length && !ok; s++) {
      for (let e = s, glued = ""; e < a.length; e++) {
        glued += a[e]!;
        if (glued === w[wi] && step(wi + 1, e + 1)) {
          ok = true;
          break;
        }
        if (!w[wi]!.startsWith(glued)) break;
      }
    }
    memo.set(k, ok);
    return ok;
  };
  return step(0, 0);
}

describe("gpuMatches on hostile and random names", () => {
  it("agrees with an exhaustive search on random names of short tokens", () => {
    const word = fc.constantFrom("a", "b", "ab", "rtx", "40", "90", "4090", "nvidia", "x1");
    const name = fc.array(word, { maxLength: 10 }).map((ws) => ws.join(" "));
    fc.assert(
      fc.property(name, name, (req, actual) => {
        expect(gpuMatches(req, actual)).toBe(referenceMatch(req, actual));
      }),
      { numRuns: 2000 },
    );
  });

  it("answers at once for a name of 60 one-letter words against a request of 12 that cannot all occur", () => {
    // A backtracking search tries every placement: C(60, 12) ≈ 1.4e12 of them for this pair.
    const actual = Array(60).fill("a").join(" ");
    const requested = `${Array(12).fill("a").join(" ")} b`;
    expect(actual.length).toBeLessThanOrEqual(256); // what a hello may carry
    expect(requested.length).toBeLessThanOrEqual(64); // what a job may ask for
    expect(gpuMatches(requested, actual)).toBe(false);
    expect(gpuMatches(Array(12).fill("a").join(" "), actual)).toBe(true);
    expect(gpuMatches("aa aaa a", "a a b a a a")).toBe(false);
    expect(gpuMatches("aa aaa a", "a a a a a a")).toBe(true);
  });
});
