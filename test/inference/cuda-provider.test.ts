import { describe, expect, it } from "vitest";
import { describeCudaProviderProblem } from "../../src/inference/cuda-provider.js";

/**
 * What the engine and `aitbc doctor` say when the CUDA provider cannot load, whatever this host
 * has installed: the check's findings are given here, not read from the host.
 */
describe("describeCudaProviderProblem", () => {
  const dir = "/x/onnxruntime-node/bin/napi-v6/linux/x64";

  it("names the provider files that are missing and how to install them", () => {
    const s = describeCudaProviderProblem({ dir, missingFiles: ["libonnxruntime_providers_shared.so", "libonnxruntime_providers_cuda.so"], missingLibraries: [] });
    expect(s).toBe("CUDA provider not installed (missing libonnxruntime_providers_shared.so, libonnxruntime_providers_cuda.so; run npm run setup:cuda)");
  });

  it("names the libraries the installed provider needs and the loader cannot find", () => {
    expect(describeCudaProviderProblem({ dir, missingFiles: [], missingLibraries: ["libcudnn.so.9", "libcublasLt.so.12"] })).toBe(
      "CUDA provider needs libraries that are not found: libcudnn.so.9, libcublasLt.so.12",
    );
  });

  it("says nothing when nothing is visibly missing", () => {
    expect(describeCudaProviderProblem({ dir, missingFiles: [], missingLibraries: [] })).toBe("");
  });
});
