// Every package in package-lock.json must run on the oldest release of each Node line that
// package.json's `engines` admits (`^20.19.0 || >=22.13.0` → 20.19.0 and 22.13.0). npm only
// warns (EBADENGINE) and installs anyway, so without this a lock update that brings in a
// release needing a newer Node would pass on whatever Node CI happens to run.
//
//   node scripts/check-node-engines.mjs            exit 0, or 1 naming each package that does not fit
//   --root <dir>                                   the project folder (default: this script's parent)
import { readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import semver from "semver";

/** The lowest version of each `||` alternative of a range: "^20.19.0 || >=22.13.0" → ["20.19.0", "22.13.0"]. */
function floors(range) {
  return new semver.Range(range).set.map((comparators) => {
    const min = semver.minVersion(new semver.Range(comparators.map((c) => c.value).join(" ")));
    if (min === null) throw new Error(`engines.node ${JSON.stringify(range)} admits no version`);
    return min.version;
  });
}

/** Lock entries whose engines.node excludes one of `versions`: `{ where, version, needs, fails }`. */
function misfits(lock, versions) {
  const out = [];
  for (const [where, entry] of Object.entries(lock.packages ?? {})) {
    const needs = entry.engines?.node;
    if (where === "" || typeof needs !== "string") continue;
    const fails = versions.filter((v) => !semver.satisfies(v, needs));
    if (fails.length > 0) out.push({ where, version: entry.version, needs, fails });
  }
  return out;
}

function main(argv) {
  const at = argv.indexOf("--root");
  const root = at >= 0 ? path.resolve(argv[at + 1] ?? ".") : path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
  const pkg = JSON.parse(readFileSync(path.join(root, "package.json"), "utf8"));
  const lock = JSON.parse(readFileSync(path.join(root, "package-lock.json"), "utf8"));
  const range = pkg.engines?.node;
  if (typeof range !== "string") {
    process.stderr.write("check-node-engines: package.json has no engines.node\n");
    return 1;
  }
  const versions = floors(range);
  const bad = misfits(lock, versions);
  for (const m of bad) {
    process.stderr.write(`check-node-engines: ${m.where} ${m.version} needs node ${m.needs}, not ${m.fails.join(", ")}\n`);
  }
  if (bad.length > 0) {
    process.stderr.write(`check-node-engines: pin or override them (package.json "overrides") so engines.node ${range} holds\n`);
    return 1;
  }
  const count = Object.keys(lock.packages ?? {}).length - 1;
  process.stdout.write(`check-node-engines: all ${count} locked packages run on node ${versions.join(" and ")} (engines.node ${range})\n`);
  return 0;
}

process.exitCode = main(process.argv.slice(2));
