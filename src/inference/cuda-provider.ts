import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";

/** Libraries onnxruntime-node loads for the CUDA execution provider (installed by `npm run setup:cuda`). */
export const CUDA_PROVIDER_FILES = ["libonnxruntime_providers_shared.so", "libonnxruntime_providers_cuda.so"] as const;

export interface CudaProviderCheck {
  /** Folder holding onnxruntime-node's native libraries. */
  dir: string;
  /** Provider files that are not installed. */
  missingFiles: string[];
  /** Shared libraries the CUDA provider needs that the dynamic loader cannot find (from ldd). */
  missingLibraries: string[];
}

/**
 * Why the CUDA provider cannot load, found without a GPU: onnxruntime only says "Failed to
 * load shared library", so this looks for the provider files and asks `ldd` which of their
 * dependencies (libcudart, libcublas, libcudnn…) are not found.
 */
export function checkCudaProvider(): CudaProviderCheck {
  const dir = onnxruntimeBinDir();
  const missingFiles = CUDA_PROVIDER_FILES.filter((f) => !existsSync(path.join(dir, f)));
  const missingLibraries: string[] = [];
  const cudaLib = path.join(dir, "libonnxruntime_providers_cuda.so");
  if (existsSync(cudaLib)) {
    try {
      const out = execFileSync("ldd", [cudaLib], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"], timeout: 10_000 });
      for (const line of out.split("\n")) {
        const m = /^\s*(\S+)\s+=>\s+not found/.exec(line);
        if (m?.[1] !== undefined) missingLibraries.push(m[1]);
      }
    } catch {
      // No ldd (or it failed): the session error is all there is to go on.
    }
  }
  return { dir, missingFiles, missingLibraries };
}

/** One line for logs and `aitbc doctor`: what is missing, or "" when nothing is visibly missing. */
export function describeCudaProviderProblem(check: CudaProviderCheck): string {
  if (check.missingFiles.length > 0) return `CUDA provider not installed (missing ${check.missingFiles.join(", ")}; run npm run setup:cuda)`;
  if (check.missingLibraries.length > 0) return `CUDA provider needs libraries that are not found: ${check.missingLibraries.join(", ")}`;
  return "";
}

function onnxruntimeBinDir(): string {
  const main = createRequire(import.meta.url).resolve("onnxruntime-node");
  // main is <pkg>/dist/index.js; the binding and its libraries live in <pkg>/bin/napi-v6/<platform>/<arch>.
  return path.join(path.dirname(path.dirname(main)), "bin", "napi-v6", process.platform, process.arch);
}
