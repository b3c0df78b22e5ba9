#!/usr/bin/env node
// `npm run setup:cuda`: installs onnxruntime-node's CUDA execution provider on a GPU host.
//
// A plain install skips onnxruntime-node's own download (it fetches the provider from
// api.nuget.org, outside the npm registry, and fails without that network). This step runs
// onnxruntime-node 1.30's installer on purpose, with its "cuda12" manifest (the only CUDA
// manifest 1.30 has for linux/x64: Microsoft.ML.OnnxRuntime.Gpu.Linux 1.30.0), then says
// which libraries the provider still cannot find. Exit 0 when the provider files are in
// place, 1 otherwise.
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";

const require = createRequire(import.meta.url);
const pkgDir = path.dirname(require.resolve("onnxruntime-node/package.json"));
const binDir = path.join(pkgDir, "bin", "napi-v6", process.platform, process.arch);
const files = ["libonnxruntime_providers_shared.so", "libonnxruntime_providers_cuda.so"];

if (`${process.platform}/${process.arch}` !== "linux/x64") {
  console.error(`setup:cuda: onnxruntime-node ships a CUDA provider for linux/x64 only (this is ${process.platform}/${process.arch})`);
  process.exit(1);
}

const missing = () => files.filter((f) => !existsSync(path.join(binDir, f)));
if (missing().length > 0) {
  console.log(`setup:cuda: downloading the CUDA provider for onnxruntime-node into ${binDir}`);
  // Overrides a skip the installing shell may carry (ONNXRUNTIME_NODE_INSTALL, npm_config_onnxruntime_node_install).
  const env = { ...process.env, ONNXRUNTIME_NODE_INSTALL: "cuda12" };
  delete env.npm_config_onnxruntime_node_install;
  const r = spawnSync(process.execPath, [path.join(pkgDir, "script", "install.js"), "--onnxruntime-node-install=cuda12"], { cwd: pkgDir, env, stdio: "inherit" });
  if (r.status !== 0 || missing().length > 0) {
    console.error("setup:cuda: the download failed (is https://api.nuget.org reachable? a proxy goes in GLOBAL_AGENT_HTTPS_PROXY).");
    console.error(`setup:cuda: still missing: ${missing().join(", ")}`);
    process.exit(1);
  }
} else {
  console.log(`setup:cuda: the CUDA provider is already installed in ${binDir}`);
}

// The provider loads only when CUDA's runtime, cuBLAS and cuDNN are on the loader path.
try {
  const out = execFileSync("ldd", [path.join(binDir, "libonnxruntime_providers_cuda.so")], { encoding: "utf8" });
  const notFound = out.split("\n").filter((l) => l.includes("not found")).map((l) => l.trim().split(/\s+/)[0]);
  if (notFound.length > 0) {
    console.warn(`setup:cuda: installed, but these libraries are not found: ${notFound.join(", ")}`);
    console.warn("setup:cuda: install the CUDA runtime and cuDNN 9 they come from (or add their folder to LD_LIBRARY_PATH), then run aitbc doctor");
  } else {
    console.log("setup:cuda: every library the provider links against is found; run aitbc doctor to load it on a GPU");
  }
} catch {
  console.warn("setup:cuda: could not run ldd to check the provider's libraries; run aitbc doctor");
}
