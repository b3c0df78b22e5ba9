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
