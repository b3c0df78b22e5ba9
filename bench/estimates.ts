/**
 * `npm run bench:estimates`: how close is `estimated_time_seconds` to what a job really takes?
 * A coordinator and BENCH_MINERS fake-engine miners (`node dist/bin/aitbc.js`, child processes,
 * built first; test/e2e/cluster.ts), each decoding at BENCH_TPS tokens/s with BENCH_SLOTS slots.
 * The same seeded workload runs twice, each on a fresh coordinator and fleet:
 *
 *   config     [estimates] observe = false: the config-only estimator, given the fake engine's
 *              nominal speed as default_tokens_per_second (an operator who wrote the right
 *              number) and overhead_seconds as shipped (BENCH_PEER_OVERHEAD, default 2)
 *   observed   [estimates] observe = true: the same config, plus what the results report
 *
 * Each: BENCH_WARMUP jobs one at a time (the observed side learns from them), then BENCH_JOBS
 * jobs with max_new_tokens uniform in [BENCH_MIN_TOKENS, BENCH_MAX_TOKENS], submitted at random
 * (exponential) gaps averaging BENCH_GAP_MS, so a queue forms and drains. For each of those:
 * error = |estimated − actual| / actual, actual = completed_at − created_at (the coordinator's
 * clock). Prints the median and p90 of the error per side and the ratio observed / config.
 *
 * Environment: BENCH_MINERS (2), BENCH_SLOTS (2), BENCH_TPS (50), BENCH_WARMUP (10),
 * BENCH_JOBS (60), BENCH_MIN_TOKENS (16), BENCH_MAX_TOKENS (128), BENCH_GAP_MS (500),
 * BENCH_PEER_OVERHEAD (2), BENCH_SEED (1).
 */
import { spawnSync } from "node:child_process";
import { Prng } from "../src/common/prng.js";
import { Cluster, ROOT, assertBuilt, sleep } from "../test/e2e/cluster.js";
import { median } from "./bench-support.js";

const MINERS = Number(process.env.BENCH_MINERS ?? 2);
const SLOTS = Number(process.env.BENCH_SLOTS ?? 2);
const TPS = Number(process.env.BENCH_TPS ?? 50);
const WARMUP = Number(process.env.BENCH_WARMUP ?? 10);
const JOBS = Number(process.env.BENCH_JOBS ?? 60);
const MIN_TOKENS = Number(process.env.BENCH_MIN_TOKENS ?? 16);
const MAX_TOKENS = Number(process.env.BENCH_MAX_TOKENS ?? 128);
const GAP_MS = Number(process.env.BENCH_GAP_MS ?? 500);
const PEER_OVERHEAD = Number(process.env.BENCH_PEER_OVERHEAD ?? 2);
const SEED = Number(process.env.BENCH_SEED ?? 1);
const MODEL = "tiny-gpt2";
const TARGET_MEDIAN = 0.2;

interface Planned {
  maxNewTokens: number;
  gapMs: number;
}

interface Measured {
  estimate: number;
  actual: number;
  error: number;
}

/** The same jobs and gaps for both sides. */
function plan(): { warmup: number[]; jobs: Planned[] } {
  const rnd = new Prng(SEED);
  const tokens = (): number => MIN_TOKENS + Math.floor(rnd.next() * (MAX_TOKENS - MIN_TOKENS + 1));
  const warmup = Array.from({ length: WARMUP }, tokens);
  const jobs = Array.from({ length: JOBS }, () => ({ maxNewTokens: tokens(), gapMs: -Math.log(1 - rnd.next()) * GAP_MS }));
  return { warmup, jobs };
}

function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)] ?? NaN;
}

async function submit(c: Cluster, maxNewTokens: number): Promise<{ id: string; estimate: number }> {
  const r = await c.api<{ job_id: string; estimated_time_seconds: number }>("POST", "/v1/jobs", { model: MODEL, input: "estimate me", parameters: { max_new_tokens: maxNewTokens } });
  if (r.status !== 201) throw new Error(`submit answered ${r.status}: ${JSON.stringify(r.body)}`);
  return { id: r.body.job_id, estimate: r.body.estimated_time_seconds };
}

/** Seconds from created_at to completed_at, once the job has completed. */
async function actualSeconds(c: Cluster, id: string): Promise<number> {
  const deadline = Date.now() + 120_000;
  while (Date.now() < deadline) {
    const j = await c.job(id);
    if (j.status === "completed") return (Date.parse(j.completed_at as string) - Date.parse(j.created_at as string)) / 1000;
    if (j.status === "failed" || j.status === "cancelled" || j.status === "timed_out" || j.status === "expired") throw new Error(`job ${id} ended ${String(j.status)}`);
    await sleep(200);
  }
  throw new Error(`job ${id} did not complete in 120 s`);
}

async function side(observe: boolean, work: ReturnType<typeof plan>): Promise<Measured[]> {
  const c = await Cluster.start({
    AITBC_COORDINATOR_ESTIMATES_OBSERVE: String(observe),
    AITBC_COORDINATOR_ESTIMATES_DEFAULT_TOKENS_PER_SECOND: String(TPS),
    AITBC_COORDINATOR_ESTIMATES_OVERHEAD_SECONDS: String(PEER_OVERHEAD),
  });
  try {
    for (let i = 0; i < MINERS; i++) {
      await c.startMiner({ name: `est-${i}`, fakeTokensPerSecond: TPS, env: { AITBC_MINER_MINER_MAX_CONCURRENT: String(SLOTS) } });
    }
    for (const t of work.warmup) await actualSeconds(c, (await submit(c, t)).id);
    const pending: Promise<Measured>[] = [];
    for (const j of work.jobs) {
      await sleep(j.gapMs);
      const s = await submit(c, j.maxNewTokens);
      pending.push(actualSeconds(c, s.id).then((actual) => ({ estimate: s.estimate, actual, error: Math.abs(s.estimate - actual) / actual })));
    }
    return await Promise.all(pending);
  } finally {
    await c.close();
  }
}

async function main(): Promise<void> {
  process.stderr.write("building dist/ (npm run build)…\n");
  const build = spawnSync("npm", ["run", "build", "--silent"], { cwd: ROOT, stdio: "inherit" });
  if (build.status !== 0) throw new Error("npm run build failed");
  assertBuilt();
  const work = plan();
  process.stdout.write(
    `${MINERS} fake-engine miners × ${SLOTS} slots at ${TPS} tokens/s; ${WARMUP} warm-up jobs, then ${JOBS} jobs of ${MIN_TOKENS}–${MAX_TOKENS} tokens, mean gap ${GAP_MS} ms (seed ${SEED})\n` +
      `config side: default_tokens_per_second = ${TPS}, overhead_seconds = ${PEER_OVERHEAD}, observe = false\n\n`,
  );
  const rows: { name: string; m: Measured[] }[] = [];
  for (const [name, observe] of [["config (peer)", false], ["observed", true]] as const) {
    process.stderr.write(`running ${name}…\n`);
    rows.push({ name, m: await side(observe, work) });
  }
  const f = (x: number): string => `${(x * 100).toFixed(1)}%`.padStart(8);
  process.stdout.write(`${"estimator".padEnd(15)}${"jobs".padStart(6)}${"median".padStart(8)}${"p90".padStart(8)}${"actual med s".padStart(14)}${"est med s".padStart(11)}\n`);
  for (const r of rows) {
    const err = r.m.map((x) => x.error);
    process.stdout.write(
      `${r.name.padEnd(15)}${String(r.m.length).padStart(6)}${f(median(err))}${f(pct(err, 90))}${median(r.m.map((x) => x.actual)).toFixed(2).padStart(14)}${median(r.m.map((x) => x.estimate)).toFixed(2).padStart(11)}\n`,
    );
  }
  const [peer, ours] = rows.map((r) => r.m.map((x) => x.error)) as [number[], number[]];
  process.stdout.write(
    `\nratio observed / config: median ${(median(ours) / median(peer)).toFixed(3)}×, p90 ${(pct(ours, 90) / pct(peer, 90)).toFixed(3)}×` +
      ` (target: observed median ≤ ${TARGET_MEDIAN * 100}%: ${median(ours) <= TARGET_MEDIAN ? "met" : "missed"})\n`,
  );
}

main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
