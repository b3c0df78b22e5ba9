// Compiles dist/: the package (tsconfig.build.json, incremental) and the dashboard page
// (src/dashboard: its own tsconfig for the browser, plus its HTML and CSS copied beside the
// script). One place for the build's steps: `npm run build`, postinstall and prestart use it.
//
//   node scripts/build-dist.mjs        build; exits with tsc's status when a step fails
import { spawnSync } from "node:child_process";
import { copyFileSync, mkdirSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const DASHBOARD_ASSETS = ["index.html", "app.css"];

/** Runs the steps; returns 0, or the exit status of the step that failed. */
export function buildDist(root, { stdio = "inherit" } = {}) {
  const require = createRequire(path.join(root, "package.json"));
  const tsc = path.join(path.dirname(require.resolve("typescript/package.json")), "bin", "tsc");
  for (const args of [
    ["-p", "tsconfig.build.json", "--incremental", "--tsBuildInfoFile", "dist/.tsbuildinfo"],
    ["-p", path.join("src", "dashboard")],
  ]) {
    const r = spawnSync(process.execPath, [tsc, ...args], { cwd: root, stdio });
    if (r.status !== 0) return r.status ?? 1;
  }
  const out = path.join(root, "dist", "dashboard");
  mkdirSync(out, { recursive: true });
  for (const f of DASHBOARD_ASSETS) copyFileSync(path.join(root, "src", "dashboard", f), path.join(out, f));
  return 0;
}

if (process.argv[1] !== undefined && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  process.exit(buildDist(path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..")));
}
