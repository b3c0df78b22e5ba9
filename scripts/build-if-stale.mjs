// `npm start`'s prestart: compiles dist/ only when a source is newer than the last build, so a
// start on an unchanged tree does not pay for tsc (13 of its 20 s to the banner on a warm machine).
//
// Inputs: every file and folder under src/ (a folder's mtime changes when a file in it is added,
// removed or renamed, which no file's mtime shows), tsconfig.json, tsconfig.build.json and
// package.json. The last build is dist/.build-stamp (written here, dated when that build started,
// so a file saved while tsc ran still counts as newer), else dist/bin/aitbc.js (which postinstall's
// full tsc run writes). A build by hand (`npm run build`) leaves the stamp alone: the next start
// runs tsc once more, which is quick when nothing changed. Missing dist/bin/aitbc.js always builds.
//
//   node scripts/build-if-stale.mjs            build when stale
//   node scripts/build-if-stale.mjs --check    only print "fresh" or "stale: <why>"; exit 0 or 1
//   --root <dir>                               the project folder (default: this script's parent)
import { closeSync, openSync, readdirSync, statSync, utimesSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { buildDist } from "./build-dist.mjs";

const STAMP = path.join("dist", ".build-stamp");
const ENTRY = path.join("dist", "bin", "aitbc.js");
const CONFIG_FILES = ["tsconfig.json", "tsconfig.build.json", "package.json"];

function mtimeMs(file) {
  try {
    return statSync(file).mtimeMs;
  } catch {
    return undefined;
  }
}

/** The newest input: its path and mtime. */
function newestInput(root) {
  let newest = { file: "", mtimeMs: -Infinity };
  const consider = (file, ms) => {
    if (ms !== undefined && ms > newest.mtimeMs) newest = { file, mtimeMs: ms };
  };
  const walk = (dir) => {
    consider(dir, mtimeMs(dir));
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      const full = path.join(dir, entry.name);
      if (entry.isDirectory()) walk(full);
      else consider(full, mtimeMs(full));
    }
  };
  walk(path.join(root, "src"));
  for (const f of CONFIG_FILES) consider(path.join(root, f), mtimeMs(path.join(root, f)));
  return newest;
}

/** Why dist/ must be rebuilt, or undefined when it is fresh. */
export function staleReason(root) {
  const entry = mtimeMs(path.join(root, ENTRY));
  if (entry === undefined) return `${ENTRY} is missing`;
  const built = mtimeMs(path.join(root, STAMP)) ?? entry;
  const newest = newestInput(root);
  if (newest.mtimeMs > built) return `${path.relative(root, newest.file) || "."} is newer than the last build`;
  return undefined;
}

function build(root) {
  const started = new Date();
  const status = buildDist(root);
  if (status !== 0) process.exit(status);
  // The build's start time: a source saved while tsc ran is still newer, so the next start builds.
  const stamp = path.join(root, STAMP);
  closeSync(openSync(stamp, "a"));
  utimesSync(stamp, started, started);
}

if (process.argv[1] !== undefined && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const args = process.argv.slice(2);
  const at = args.indexOf("--root");
  const root = at >= 0 && args[at + 1] !== undefined ? path.resolve(args[at + 1]) : path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
  const why = staleReason(root);
  if (args.includes("--check")) {
    process.stdout.write(why === undefined ? "fresh\n" : `stale: ${why}\n`);
    process.exit(why === undefined ? 0 : 1);
  }
  if (why !== undefined) {
    process.stderr.write(`compiling dist/ (${why})\n`);
    build(root);
  }
}
