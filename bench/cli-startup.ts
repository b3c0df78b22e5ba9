/**
 * `npm run bench:cli`: how long `aitbc --version`, `aitbc --help` and `aitbc jobs --help` take,
 * start to exit, next to the floor on this machine: `node -e 0` (a Node process that does
 * nothing). Each is run RUNS times (default 5), alternating so load from other processes falls
 * on all alike; the table shows the median, the ratio to node -e 0, and whether --version and
 * --help are within the 300 ms target. Runs dist/bin/aitbc.js: `npm run build` first.
 */
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import path from "node:path";
import { median } from "./bench-support.js";

const CLI = path.join(import.meta.dirname, "..", "dist", "bin", "aitbc.js");
const RUNS = Number(process.env.RUNS ?? 5);
const TARGET_MS = 300;

if (!existsSync(CLI)) {
  process.stderr.write(`${CLI} is missing: run npm run build first\n`);
  process.exit(1);
}

const cases: { name: string; args: string[]; target?: number }[] = [
  { name: "node -e 0 (peer)", args: ["-e", "0"] },
  { name: "aitbc --version", args: [CLI, "--version"], target: TARGET_MS },
  { name: "aitbc --help", args: [CLI, "--help"], target: TARGET_MS },
  { name: "aitbc jobs --help", args: [CLI, "jobs", "--help"] },
];

const times = new Map<string, number[]>(cases.map((c) => [c.name, []]));
for (let i = 0; i < RUNS; i++) {
  for (const c of cases) {
    const started = process.hrtime.bigint();
    const r = spawnSync(process.execPath, c.args, { stdio: ["ignore", "ignore", "pipe"] });
    const ms = Number(process.hrtime.bigint() - started) / 1e6;
    if (r.status !== 0) throw new Error(`${c.name} exited ${r.status}: ${r.stderr.toString()}`);
    times.get(c.name)!.push(ms);
  }
}

const peer = median(times.get(cases[0]!.name)!);
const rows = cases.map((c) => {
  const m = median(times.get(c.name)!);
  return [c.name, `${m.toFixed(0)} ms`, `${(m / peer).toFixed(1)}×`, c.target === undefined ? "" : m <= c.target ? `≤ ${c.target} ms: yes` : `≤ ${c.target} ms: NO`];
});
const head = ["command", `median of ${RUNS}`, "÷ node -e 0", "target"];
const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
for (const row of [head, ...rows]) process.stdout.write(`${row.map((c, i) => c.padEnd(widths[i]!)).join("  ").trimEnd()}\n`);
process.stdout.write(`node ${process.version}, ${path.relative(process.cwd(), CLI)}\n`);
