// After `npm ci` / `npm install`: compile dist/ and build the tiny-gpt2 model so a fresh
// clone runs (`npm start`, `npm test`) without extra steps. Missing optional things (no
// typescript in a production install, a prebuilt dist/) are skipped with a note; a compile
// or model build that fails makes the install fail loudly.
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const require = createRequire(path.join(root, "package.json"));

function note(message) {
  process.stderr.write(`aitbc postinstall: ${message}\n`);
}

function run(label, args) {
  const result = spawnSync(process.execPath, args, { cwd: root, stdio: "inherit" });
  if (result.status !== 0) {
    note(`${label} FAILED (exit ${result.status ?? result.signal})`);
    process.exit(result.status || 1);
  }
}

if (process.env.AITBC_SKIP_POSTINSTALL === "1") {
  note("skipped (AITBC_SKIP_POSTINSTALL=1)");
  process.exit(0);
}

let tsc;
try {
  tsc = path.join(path.dirname(require.resolve("typescript/package.json")), "bin", "tsc");
} catch {
  tsc = undefined;
}
if (tsc !== undefined && existsSync(path.join(root, "tsconfig.build.json"))) {
  note("compiling dist/ and the dashboard (scripts/build-dist.mjs)");
  run("compiling dist/", [path.join(root, "scripts", "build-dist.mjs")]);
} else {
  note("typescript is not installed: using the dist/ that is there");
}

const cli = path.join(root, "dist", "bin", "aitbc.js");
if (!existsSync(cli)) {
  note("dist/bin/aitbc.js is missing and cannot be compiled here: not building models (run `npm run build`, then `aitbc models build tiny-gpt2`)");
  process.exit(0);
}
if (existsSync(path.join(root, "models", "tiny-gpt2", "config.json"))) {
  note("models/tiny-gpt2 is there");
} else {
  note("building models/tiny-gpt2");
  run("building models/tiny-gpt2", [cli, "models", "build", "tiny-gpt2", "--models-dir", path.join(root, "models")]);
}
