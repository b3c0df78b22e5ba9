/**
 * `npm run bench:hostile`: does one hostile miner key and one hostile client key slow the
 * coordinator down for everyone else? The coordinator (`aitbc coordinator`, a child process,
 * default limits, a fresh SQLite data dir) answers a steady probe of GET /healthz from this
 * process, first idle, then while bench/hostile-flood.ts (another child process) floods it: a
 * miner sending progress frames and 4000-entry heartbeats for its lease, a hello claiming 4096
 * leases and 4096 slots, reconnecting whenever it is closed; a client flooding submits and
 * event-stream opens (rate-limited, stream-capped). Rounds alternate idle and flooded; the table
 * shows the probe's p50, p99 and max per phase (medians over rounds) and ends with the ratio of
 * flooded to idle p99. Targets (issue 13): flooded p99 ≤ 3× idle p99, no probe over 500 ms.
 *
 * Environment: BENCH_SECONDS (per phase, default 5), BENCH_ROUNDS (default 3), BENCH_PROBE_MS
 * (gap between probes, default 5).
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { databasePath } from "../src/coordinator/coordinator.js";
import { SqliteJobStore } from "../src/coordinator/store/sqlite/sqlite-job-store.js";
import { median, startCoordinator, stopChild, tsx } from "./bench-support.js";

const ROOT = path.resolve(import.meta.dirname, "..");
const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const PROBE_GAP_MS = Number(process.env.BENCH_PROBE_MS ?? 5);

/** GET /healthz one after another for `seconds`; the latency of each, ms. */
async function probe(url: string, seconds: number): Promise<number[]> {
  const out: number[] = [];
  const end = performance.now() + seconds * 1000;
  while (performance.now() < end) {
    const t = performance.now();
    const r = await fetch(`${url}/healthz`);
    await r.arrayBuffer();
    if (!r.ok) throw new Error(`/healthz answered ${r.status}`);
    out.push(performance.now() - t);
    await new Promise((res) => setTimeout(res, PROBE_GAP_MS));
  }
  return out;
}

function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? 0;
}

async function main(): Promise<void> {
  const dataDir = await mkdtemp(path.join(tmpdir(), "aitbc-bench-hostile-"));
  const keyStore = new SqliteJobStore(databasePath(dataDir));
  const miner = await keyStore.createKey("miner", "hostile-miner", "bench", Date.now());
  const client = await keyStore.createKey("client", "hostile-client", "bench", Date.now());
  await keyStore.close();
  const ours = await startCoordinator(dataDir, {}, "error");
  const phases: Record<"idle" | "flooded", { p50: number[]; p99: number[]; max: number[]; n: number[] }> = {
    idle: { p50: [], p99: [], max: [], n: [] },
    flooded: { p50: [], p99: [], max: [], n: [] },
  };
  const tallies: Record<string, number>[] = [];
  try {
    await probe(ours.url, 1); // warm-up
    for (let round = 1; round <= ROUNDS; round++) {
      process.stderr.write(`round ${round}/${ROUNDS}: idle\n`);
      const idle = await probe(ours.url, SECONDS);
      process.stderr.write(`round ${round}/${ROUNDS}: flooded\n`);
      const flood = tsx([path.join(ROOT, "bench/hostile-flood.ts"), ours.url, miner.key, client.key]);
      const tally = new Promise<Record<string, number>>((resolve) => {
        createInterface({ input: flood.stdout! }).once("line", (l) => resolve(JSON.parse(l) as Record<string, number>));
        flood.once("exit", () => resolve({}));
      });
      await new Promise((r) => setTimeout(r, 1_500)); // let the flood reach full speed (tsx start-up)
      const flooded = await probe(ours.url, SECONDS);
      flood.kill("SIGTERM");
      tallies.push(await tally);
      for (const [phase, xs] of [["idle", idle], ["flooded", flooded]] as const) {
        phases[phase].p50.push(pct(xs, 50));
        phases[phase].p99.push(pct(xs, 99));
        phases[phase].max.push(Math.max(...xs));
        phases[phase].n.push(xs.length);
      }
    }
  } finally {
    await stopChild(ours.child);
    await rm(dataDir, { recursive: true, force: true });
  }
  const lines = [
    `GET /healthz while one miner key and one client key flood the coordinator: ${SECONDS}s per phase, median of ${ROUNDS} rounds (node ${process.version})`,
    "",
    `${"phase".padEnd(10)}${"probes".padStart(8)}${"p50 ms".padStart(9)}${"p99 ms".padStart(9)}${"max ms".padStart(9)}`,
  ];
  for (const phase of ["idle", "flooded"] as const) {
    const p = phases[phase];
    lines.push(`${phase.padEnd(10)}${median(p.n).toFixed(0).padStart(8)}${median(p.p50).toFixed(2).padStart(9)}${median(p.p99).toFixed(2).padStart(9)}${median(p.max).toFixed(1).padStart(9)}`);
  }
  const worstMax = Math.max(...phases.flooded.max);
  lines.push("", `the flood, last round: ${JSON.stringify(tallies.at(-1))}`);
  lines.push(`slowest flooded probe in any round: ${worstMax.toFixed(1)} ms (target < 500)`);
  lines.push(`ratio flooded/idle p99: ${(median(phases.flooded.p99) / median(phases.idle.p99)).toFixed(2)} (target ≤ 3)`);
  process.stdout.write(`${lines.join("\n")}\n`);
}

await main();
