/**
 * `npm run bench:cluster`: end-to-end jobs/s of the whole cycle — a client submits over REST, a
 * fake-engine miner claims the job, the result is committed, the client sees it completed — for
 *
 *   sqlite         one coordinator on SQLite (WAL, synchronous=FULL), results in its data dir
 *   pg ×1, pg ×3   1 or 3 coordinator replicas on one PostgreSQL schema (synchronous_commit on
 *                  for submits and results; lease renewals commit asynchronously), results in an
 *                  S3-compatible server (s3rver, in a child process of its own) — test/cluster/replica-cluster.ts
 *
 * against BullMQ doing the same submit → claim → complete cycle, in the same run, on the same
 * driver and the same fake work:
 *
 *   bullmq aof     a Redis this bench starts with appendonly yes + appendfsync always (durable)
 *   bullmq mem     the machine's Redis as configured (127.0.0.1:6379, no persistence)
 *
 * BullMQ sits behind a REST front too (bench/cluster-bullmq.ts, one fastify child process:
 * POST /v1/jobs → queue.add; GET /v1/jobs/:id/wait → waitUntilFinished), so both sides pay HTTP.
 * The driver keeps BENCH_CONCURRENCY jobs outstanding; each one is a submit then a follow until
 * the job is seen completed (ours: GET /v1/jobs/{id}/events, the SSE stream, read to its terminal
 * event; BullMQ: the front's wait). Submits rotate over the replicas and a job is followed on the
 * next one. Workers: 4 miners × 8 slots (each dials its own replica first) against 4 BullMQ
 * worker processes × concurrency 8; every job is the FakeEngine generating BENCH_TOKENS tokens at
 * BENCH_TPS tokens/s (the BullMQ processor runs the same class). Each side starts fresh every
 * round (new data dir / schema / queue), warms up, then runs BENCH_JOBS jobs; rounds alternate
 * the order of the sides. jobs/s = jobs / (first submit → last job seen completed), median over
 * rounds; the ratios are of those medians.
 *
 * Then the claim latency with 10,000 queued jobs: the store's claimNextJob timed in this process
 * on PostgreSQL and SQLite, with a short queue (only the jobs the claims take), with 10,000 more
 * of the same model queued behind them, and with 10,000 of a model the miner does not serve.
 *
 * Environment: BENCH_ROUNDS (3), BENCH_JOBS (per side per round, 200), BENCH_WARMUP (30),
 * BENCH_CONCURRENCY (32), BENCH_TOKENS (8), BENCH_TPS (2000), BENCH_MINERS (4), BENCH_SLOTS (8),
 * BENCH_DEPTH (10000), BENCH_CLAIMS (claims per queue per round, 150), BENCH_SIDES (a comma
 * list of the side keys above, without spaces: sqlite,pg1,pg3,bullmq-aof,bullmq-mem).
 */
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createConnection } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { createRequire } from "node:module";
import { createInterface } from "node:readline";
import Database from "better-sqlite3";
import { Queue } from "bullmq";
import pg from "pg";
import { databasePath } from "../src/coordinator/store/open-store.js";
import type { JobStore, MinerCapabilities, NewJob } from "../src/coordinator/store/job-store.js";
import { PostgresJobStore } from "../src/coordinator/store/postgres/postgres-job-store.js";
import { SqliteJobStore } from "../src/coordinator/store/sqlite/sqlite-job-store.js";
import { resolveGenerationParameters } from "../src/protocol/generation.js";
import { PG_URL, freshSchema } from "../test/coordinator/pg-harness.js";
import { ReplicaCluster } from "../test/cluster/replica-cluster.js";
import { CLI, Proc, ROOT, assertBuilt, waitFor } from "../test/e2e/cluster.js";
import { cpuSeconds, freePort, hostBusySeconds, median, ownCpuSeconds, pidsNamed, stopChild, tsx } from "./bench-support.js";

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const JOBS = Number(process.env.BENCH_JOBS ?? 200);
const WARMUP = Number(process.env.BENCH_WARMUP ?? 30);
const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY ?? 32);
const TOKENS = Number(process.env.BENCH_TOKENS ?? 8);
const TPS = Number(process.env.BENCH_TPS ?? 2000);
const MINERS = Number(process.env.BENCH_MINERS ?? 4);
const SLOTS = Number(process.env.BENCH_SLOTS ?? 8);
const DEPTH = Number(process.env.BENCH_DEPTH ?? 10_000);
const CLAIMS = Number(process.env.BENCH_CLAIMS ?? 150);
const MODEL = "tiny-gpt2";

/** The coordinators' settings on every side of ours: the scheduler's defaults, limits out of the way, warn-level logs. */
const COORDINATOR_ENV: Record<string, string> = {
  AITBC_COORDINATOR_SCHEDULER_LEASE_TTL: "30s",
  AITBC_COORDINATOR_SCHEDULER_HEARTBEAT: "10s",
  AITBC_COORDINATOR_SCHEDULER_REAP_INTERVAL: "1s",
  AITBC_COORDINATOR_SCHEDULER_REQUEUE_BACKOFF: "1s",
  AITBC_COORDINATOR_LIMITS_REQUESTS_PER_MINUTE: "100000000",
  AITBC_COORDINATOR_LIMITS_REQUESTS_PER_HOUR: "100000000",
  AITBC_COORDINATOR_LIMITS_MAX_STREAMS_PER_KEY: "100000",
  AITBC_COORDINATOR_LOG_LEVEL: "warn",
};

/** Every child process and temp resource still to clean up, whatever happens. */
const children = new Set<ChildProcess>();
const cleanups = new Set<() => Promise<void>>();

async function cleanUpAll(): Promise<void> {
  await Promise.all([...children].map((c) => stopChild(c).catch(() => undefined)));
  for (const c of [...cleanups].reverse()) await c().catch(() => undefined);
  cleanups.clear();
}

function track(child: ChildProcess): ChildProcess {
  children.add(child);
  child.once("exit", () => children.delete(child));
  return child;
}

/** A side of the comparison, started fresh for one round. */
interface Running {
  /** Where the driver submits (rotating) and follows (the next one). */
  urls: string[];
  submit(url: string, i: number): Promise<string>;
  /** Resolves once the job is seen completed; ours also say when (store time, ms) it was queued, assigned, running, completed. */
  follow(url: string, id: string): Promise<Partial<Record<Stage, number>> | undefined>;
  /** After the run: a line saying what the store holds (every accepted job completed), or a problem. */
  check(expected: number): Promise<string>;
  /** Server-wide counters to difference over the measured run (PostgreSQL: commits, WAL flushes). */
  counters?: () => Promise<Record<string, number>>;
  /** CPU seconds used so far by each group of this side's processes (differenced over the measured run). */
  cpu: () => Record<string, number>;
  stop(): Promise<void>;
}

interface Side {
  key: string;
  label: string;
  start(): Promise<Running>;
}

const STAGES = ["queued", "assigned", "running", "completed"] as const;
type Stage = (typeof STAGES)[number];

function body(i: number): Record<string, unknown> {
  return { model: MODEL, input: `bench job ${i}`, parameters: { max_new_tokens: TOKENS, seed: i } };
}

async function postJob(url: string, i: number, key?: string): Promise<string> {
  const res = await fetch(`${url}/v1/jobs`, {
    method: "POST",
    headers: { "content-type": "application/json", ...(key === undefined ? {} : { authorization: `Bearer ${key}` }) },
    body: JSON.stringify(body(i)),
  });
  const text = await res.text();
  if (res.status !== 201) throw new Error(`submit answered ${res.status}: ${text.slice(0, 300)}`);
  return (JSON.parse(text) as { job_id: string }).job_id;
}

// --- our side

/** A fake-engine miner child dialling these URLs in turn, SLOTS jobs at once. */
function startMiner(dir: string, name: string, urls: string[], minerKey: string): Proc {
  const child = spawn(process.execPath, [CLI, "miner", "-c", path.join(dir, "miner.toml"), "--coordinator", urls.join(","), "--name", name, "--cpu"], {
    cwd: ROOT,
    env: {
      ...process.env,
      AITBC_MINER_COORDINATOR_KEY: minerKey,
      AITBC_MINER_COORDINATOR_RECONNECT_MIN: "100ms",
      AITBC_MINER_COORDINATOR_RECONNECT_MAX: "400ms",
      AITBC_MINER_MINER_MAX_CONCURRENT: String(SLOTS),
      AITBC_MINER_MINER_PROGRESS_INTERVAL: "500ms",
      AITBC_MINER_INFERENCE_MODELS_DIR: path.join(ROOT, "models"),
      AITBC_MINER_FAKE_ENGINE_ENABLED: "true",
      AITBC_MINER_FAKE_ENGINE_TOKENS_PER_SECOND: String(TPS),
      AITBC_MINER_LOG_LEVEL: "warn",
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  track(child);
  return new Proc(`miner ${name}`, child);
}

/** Waits until /readyz on `url` counts `miners` connected miners. */
async function minersConnected(url: string, miners: number, procs: Proc[]): Promise<void> {
  await waitFor(
    `${miners} miners connected`,
    async () => {
      const dead = procs.find((p) => !p.running);
      if (dead !== undefined) throw new Error(`${dead.label} exited:\n${dead.output.slice(-2000)}`);
      return ((await (await fetch(`${url}/readyz`)).json()) as { miners: number }).miners;
    },
    (n) => n >= miners,
    30_000,
  );
}

function ourClient(urls: string[], clientKey: string): Pick<Running, "urls" | "submit" | "follow"> {
  return {
    urls,
    submit: (url, i) => postJob(url, i, clientKey),
    follow: async (url, id) => {
      const res = await fetch(`${url}/v1/jobs/${id}/events`, { headers: { authorization: `Bearer ${clientKey}` } });
      const text = await res.text(); // the stream ends after the job's terminal event
      if (!text.includes("event: completed")) throw new Error(`job ${id} did not complete: ${res.status} ${text.slice(-300)}`);
      const at: Partial<Record<Stage, number>> = {};
      for (const m of text.matchAll(/^event: (\w+)\ndata: (.*)$/gm)) {
        const stage = STAGES.find((s) => s === m[1]);
        if (stage !== undefined) at[stage] = Date.parse((JSON.parse(m[2]!) as { at: string }).at);
      }
      return at;
    },
  };
}

const sumCpu = (pids: (number | undefined)[]): number => pids.reduce<number>((a, p) => a + (p === undefined ? 0 : cpuSeconds(p)), 0);

/** The CPU groups every side reports: its servers, its workers, its store's server (pids found at each call), its S3 server, this process, and the whole host. */
function cpuGroups(servers: (number | undefined)[], workers: (number | undefined)[], store: () => number[], s3: (number | undefined)[] = []): Record<string, number> {
  return {
    servers: sumCpu(servers),
    workers: sumCpu(workers),
    store: sumCpu(store()),
    "s3 server": sumCpu(s3),
    "bench process": ownCpuSeconds(),
    host: hostBusySeconds(),
  };
}

function completedLine(counts: { status: string; n: number }[], expected: number): string {
  const completed = counts.find((c) => c.status === "completed")?.n ?? 0;
  const others = counts.filter((c) => c.status !== "completed");
  if (completed === expected && others.length === 0) return `${completed}/${expected} completed`;
  return `PROBLEM: ${completed}/${expected} completed, others ${JSON.stringify(others)}`;
}

const sqliteSide: Side = {
  key: "sqlite",
  label: "sqlite, 1 node",
  async start() {
    const dir = mkdtempSync(path.join(tmpdir(), "aitbc-bench-cluster-"));
    const rmDir = async (): Promise<void> => rmSync(dir, { recursive: true, force: true });
    cleanups.add(rmDir);
    writeFileSync(path.join(dir, "coordinator.toml"), "");
    writeFileSync(path.join(dir, "miner.toml"), "");
    const dataDir = path.join(dir, "data");
    const keys = new SqliteJobStore(databasePath(dataDir));
    const clientKey = (await keys.createKey("client", "bench-client", "bench", Date.now())).key;
    const minerKey = (await keys.createKey("miner", "bench-miner", "bench", Date.now())).key;
    await keys.close();
    const port = await freePort();
    const url = `http://127.0.0.1:${port}`;
    const coordinator = new Proc(
      "coordinator",
      track(
        spawn(process.execPath, [CLI, "coordinator", "-c", path.join(dir, "coordinator.toml"), "--port", String(port), "--data-dir", dataDir, "--log-level", "warn"], {
          cwd: ROOT,
          env: { ...process.env, ...COORDINATOR_ENV },
          stdio: ["ignore", "pipe", "pipe"],
        }),
      ),
    );
    const procs = [coordinator];
    await waitFor(
      "coordinator ready",
      async () => {
        if (!coordinator.running) throw new Error(`coordinator exited:\n${coordinator.output.slice(-2000)}`);
        return (await fetch(`${url}/readyz`)).status;
      },
      (s) => s === 200,
      30_000,
    );
    const wsUrl = `ws://127.0.0.1:${port}/v1/miners/connect`;
    for (let m = 0; m < MINERS; m++) procs.push(startMiner(dir, `m${m + 1}`, [wsUrl], minerKey));
    await minersConnected(url, MINERS, procs);
    return {
      ...ourClient([url], clientKey),
      // SQLite is in the coordinator's process: nothing counts as the store's server.
      cpu: () => cpuGroups([coordinator.child.pid], procs.slice(1).map((p) => p.child.pid), () => []),
      check: async (expected) => {
        const db = new Database(databasePath(dataDir), { readonly: true });
        try {
          return completedLine(db.prepare("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status").all() as { status: string; n: number }[], expected);
        } finally {
          db.close();
        }
      },
      stop: async () => {
        await Promise.all(procs.map((p) => p.kill("SIGKILL")));
        await rmDir();
        cleanups.delete(rmDir);
      },
    };
  },
};

function pgSide(replicas: number): Side {
  return {
    key: `pg${replicas}`,
    label: `postgres, ${replicas} replica${replicas === 1 ? "" : "s"}`,
    async start() {
      // s3rver in a process of its own, so its CPU is counted apart from the driver's.
      const c = await ReplicaCluster.start(replicas, COORDINATOR_ENV, { s3InChild: true });
      const close = (): Promise<void> => c.close();
      cleanups.add(close);
      const miners: Proc[] = [];
      try {
        for (let m = 0; m < MINERS; m++) {
          const order = c.replicas.map((_, k) => c.replicas[(m + k) % replicas]!.wsUrl);
          miners.push(startMiner(c.dir, `m${m + 1}`, order, c.minerKey));
        }
        await minersConnected(c.replicas[0]!.url, MINERS, [...miners, ...c.replicas.map((r) => r.proc)]);
      } catch (err) {
        await Promise.all(miners.map((p) => p.kill("SIGKILL")));
        throw err;
      }
      return {
        ...ourClient(
          c.replicas.map((r) => r.url),
          c.clientKey,
        ),
        cpu: () => cpuGroups(c.replicas.map((r) => r.proc.child.pid), miners.map((p) => p.child.pid), () => pidsNamed("postgres"), [c.s3Pid]),
        check: async (expected) => {
          const [sc] = await c.sql<{ setting: string }>("SELECT setting FROM pg_settings WHERE name = 'synchronous_commit'");
          const counts = await c.sql<{ status: string; n: number }>("SELECT status, COUNT(*)::int AS n FROM jobs GROUP BY status");
          return `${completedLine(counts, expected)}, synchronous_commit=${sc?.setting ?? "?"}`;
        },
        counters: async () => {
          const [d] = await c.sql<{ commits: string; statements: string }>(
            "SELECT xact_commit AS commits, tup_inserted + tup_updated + tup_deleted AS statements FROM pg_stat_database WHERE datname = current_database()",
          );
          const [w] = await c.sql<{ wal_sync: string; wal_write: string }>("SELECT wal_sync, wal_write FROM pg_stat_wal");
          return { commits: Number(d?.commits), "rows written": Number(d?.statements), "WAL flushes": Number(w?.wal_sync) };
        },
        stop: async () => {
          await Promise.all(miners.map((p) => p.kill("SIGKILL")));
          await close();
          cleanups.delete(close);
        },
      };
    },
  };
}

// --- BullMQ

/** Resolves once Redis on this port answers PING. */
async function redisUp(port: number): Promise<void> {
  await waitFor(
    `redis on ${port}`,
    () =>
      new Promise<string>((resolve) => {
        const s = createConnection({ host: "127.0.0.1", port });
        s.once("error", () => resolve("down"));
        s.once("connect", () => s.write("PING\r\n"));
        s.once("data", (d: Buffer) => {
          s.destroy();
          resolve(d.toString().trim());
        });
      }),
    (r) => r === "+PONG",
    10_000,
  );
}

/** A cluster-bullmq.ts child; resolves once it prints "ready". */
async function bullChild(args: string[]): Promise<ChildProcess> {
  const child = track(tsx([path.join(ROOT, "bench/cluster-bullmq.ts"), ...args]));
  await new Promise<void>((resolve, reject) => {
    const lines = createInterface({ input: child.stdout! });
    lines.once("line", (l) => (l === "ready" ? resolve() : reject(new Error(`cluster-bullmq said ${l}`))));
    child.once("exit", (code) => reject(new Error(`cluster-bullmq ${args[0]} exited with ${code}`)));
  });
  return child;
}

function bullSide(durable: boolean): Side {
  return {
    key: durable ? "bullmq-aof" : "bullmq-mem",
    label: durable ? "bullmq, redis aof always" : "bullmq, redis as configured",
    async start() {
      const local: (() => Promise<void>)[] = [];
      const stopLocal = async (): Promise<void> => {
        for (const f of local.splice(0).reverse()) await f().catch(() => undefined);
      };
      cleanups.add(stopLocal);
      try {
        let redisPort = 6379;
        let redisPid: number | undefined;
        if (durable) {
          const dir = mkdtempSync(path.join(tmpdir(), "aitbc-bench-redis-"));
          local.push(async () => rmSync(dir, { recursive: true, force: true }));
          redisPort = await freePort();
          const redis = track(
            spawn("redis-server", ["--port", String(redisPort), "--bind", "127.0.0.1", "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--dir", dir], { stdio: "ignore" }),
          );
          redisPid = redis.pid;
          local.push(() => stopChild(redis));
          await redisUp(redisPort);
        }
        const queueName = `bench-cluster-${randomBytes(4).toString("hex")}`;
        local.push(async () => {
          const q = new Queue(queueName, { connection: { host: "127.0.0.1", port: redisPort } });
          await q.obliterate({ force: true });
          await q.close();
        });
        const httpPort = await freePort();
        const procs = await Promise.all([
          bullChild(["front", String(redisPort), queueName, String(httpPort)]),
          ...Array.from({ length: MINERS }, () => bullChild(["worker", String(redisPort), queueName, String(SLOTS), String(TPS)])),
        ]);
        local.push(async () => {
          await Promise.all(procs.map((p) => stopChild(p)));
        });
        const url = `http://127.0.0.1:${httpPort}`;
        return {
          urls: [url],
          submit: (u, i) => postJob(u, i),
          // The machine's Redis when it is not ours to start.
          cpu: () => cpuGroups([procs[0].pid], procs.slice(1).map((p) => p.pid), () => (redisPid === undefined ? pidsNamed("redis-server") : [redisPid])),
          follow: async (u, id) => {
            const res = await fetch(`${u}/v1/jobs/${id}/wait`);
            const got = (await res.json()) as { status: string };
            if (got.status !== "completed") throw new Error(`job ${id} did not complete: ${JSON.stringify(got).slice(0, 300)}`);
            return undefined;
          },
          check: async (expected) => {
            const q = new Queue(queueName, { connection: { host: "127.0.0.1", port: redisPort } });
            try {
              const counts = await q.getJobCounts("completed", "failed", "waiting", "active", "delayed");
              const list = Object.entries(counts)
                .filter(([, n]) => n > 0)
                .map(([status, n]) => ({ status, n }));
              return completedLine(list, expected);
            } finally {
              await q.close();
            }
          },
          stop: async () => {
            await stopLocal();
            cleanups.delete(stopLocal);
          },
        };
      } catch (err) {
        await stopLocal();
        cleanups.delete(stopLocal);
        throw err;
      }
    },
  };
}

// --- the driver

interface RunResult {
  jobsPerSecond: number;
  p50: number;
  check: string;
  /** Per measured job: the differences of Running.counters. */
  perJob: Record<string, number>;
  /** CPU milliseconds per measured job, by group (Running.cpu). */
  cpuPerJob: Record<string, number>;
  /** Medians, ms: submit answered, queued → assigned, assigned → running, running → completed, completed → seen by the client. */
  stages: number[] | undefined;
}

/** `jobs` jobs, CONCURRENCY outstanding: seconds from the first submit to the last job seen completed, and each job's latency. */
async function drive(r: Running, jobs: number, offset: number): Promise<{ seconds: number; latencies: number[]; stages: number[][] }> {
  let next = 0;
  const latencies: number[] = [];
  const stages: number[][] = [];
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      for (;;) {
        const i = next++;
        if (i >= jobs) return;
        const t = performance.now();
        const wall0 = Date.now();
        const id = await r.submit(r.urls[i % r.urls.length]!, offset + i);
        const submitted = performance.now() - t;
        const at = await r.follow(r.urls[(i + 1) % r.urls.length]!, id);
        const seen = Date.now();
        latencies.push(performance.now() - t);
        if (at?.queued !== undefined && at.assigned !== undefined && at.running !== undefined && at.completed !== undefined) {
          stages.push([submitted, at.assigned - at.queued, at.running - at.assigned, at.completed - at.running, seen - at.completed, at.queued - wall0]);
        }
      }
    }),
  );
  return { seconds: (performance.now() - t0) / 1000, latencies, stages };
}

async function runSide(side: Side): Promise<RunResult> {
  const r = await side.start();
  try {
    await drive(r, WARMUP, 0);
    const before = await r.counters?.();
    const cpu0 = r.cpu();
    const { seconds, latencies, stages } = await drive(r, JOBS, WARMUP);
    const cpu1 = r.cpu();
    const after = await r.counters?.();
    const cpuPerJob = Object.fromEntries(Object.entries(cpu1).map(([k, v]) => [k, ((v - (cpu0[k] ?? 0)) * 1000) / JOBS]));
    const perJob = Object.fromEntries(Object.entries(after ?? {}).map(([k, v]) => [k, (v - (before?.[k] ?? 0)) / JOBS]));
    return { jobsPerSecond: JOBS / seconds, p50: median(latencies), check: await r.check(WARMUP + JOBS), perJob, cpuPerJob, stages: stages.length === 0 ? undefined : stages[0]!.map((_, k) => median(stages.map((x) => x[k]!))) };
  } finally {
    await r.stop();
  }
}

// --- claim latency with a deep queue

function newJob(model: string): NewJob {
  return {
    tenant: "bench",
    model,
    input: "claim latency",
    inputFileId: null,
    outputFormat: "json",
    destination: "",
    requirements: {},
    priority: "normal",
    timeoutSeconds: 600,
    parameters: resolveGenerationParameters({ max_new_tokens: TOKENS }, () => 7),
    maxAttempts: 3,
    estimatedCost: 0,
    estimatedTimeSeconds: 1,
  };
}

/** A claim-latency store: `open` makes a fresh one, `clone` copies its job `id` n times (model set) in one statement. */
interface ClaimBackend {
  name: string;
  open(): Promise<{ store: JobStore; clone: (id: string, model: string, n: number) => Promise<void>; explain?: () => Promise<string>; close: () => Promise<void> }>;
}

const pgClaims: ClaimBackend = {
  name: "postgres",
  async open() {
    const { schema, drop } = await freshSchema("bcl");
    cleanups.add(drop);
    const store = await PostgresJobStore.open({ url: PG_URL, schema });
    const sql = new pg.Client({ connectionString: PG_URL, options: `-c search_path=${schema}` });
    await sql.connect();
    const cols = (await sql.query<{ column_name: string }>("SELECT column_name FROM information_schema.columns WHERE table_schema = $1 AND table_name = 'jobs' AND column_name <> 'seq' ORDER BY ordinal_position", [schema])).rows.map(
      (r) => r.column_name,
    );
    const pick = cols.map((c) => (c === "id" ? "j.id || '_' || $4::text || '_' || g" : c === "model" ? "$2::text" : `j.${c}`)).join(", ");
    let clones = 0;
    return {
      store,
      clone: async (id, model, n) => {
        await sql.query(`INSERT INTO jobs (${cols.join(", ")}) SELECT ${pick} FROM jobs j, generate_series(1, $3::int) g WHERE j.id = $1 ORDER BY g`, [id, model, n, `${++clones}`]);
        await sql.query("ANALYZE jobs");
      },
      // The claim's look (claim-jobs.ts, claimPlain's inner SELECT) for a miner of one model, and for several.
      explain: async () => {
        const plans: string[] = [];
        for (const cond of [`model = '${MODEL}'`, `model = ANY(ARRAY['${MODEL}', 'other']::text[])`]) {
          const rows = (
            await sql.query<{ "QUERY PLAN": string }>(
              `EXPLAIN SELECT id, requirements, priority_rank, seq FROM jobs WHERE status = 'queued' AND not_before <= ${Date.now()} AND ${cond}
                 ORDER BY priority_rank DESC, seq LIMIT 32 FOR UPDATE SKIP LOCKED`,
            )
          ).rows;
          plans.push(`${cond.startsWith("model = ANY") ? "several models" : "one model"}: ${rows.map((r) => r["QUERY PLAN"].replace(/\s+\(cost=[^)]*\)/, "").trim()).filter((l) => /Scan|Index Cond|Sort Key/.test(l)).join(" ")}`);
        }
        return plans.join("\n  ");
      },
      close: async () => {
        await sql.end();
        await store.close();
        await drop();
        cleanups.delete(drop);
      },
    };
  },
};

const sqliteClaims: ClaimBackend = {
  name: "sqlite",
  async open() {
    const dir = mkdtempSync(path.join(tmpdir(), "aitbc-bench-claims-"));
    const rmDir = async (): Promise<void> => rmSync(dir, { recursive: true, force: true });
    cleanups.add(rmDir);
    const file = path.join(dir, "coordinator.db");
    const store = new SqliteJobStore(file);
    const db = new Database(file);
    const cols = (db.prepare("PRAGMA table_info(jobs)").all() as { name: string }[]).map((r) => r.name).filter((c) => c !== "seq");
    const pick = cols.map((c) => (c === "id" ? "j.id || '_' || ? || '_' || g.x" : c === "model" ? "?" : `j.${c}`)).join(", ");
    let clones = 0;
    const insert = db.prepare(`WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < ?) INSERT INTO jobs (${cols.join(", ")}) SELECT ${pick} FROM jobs j, g WHERE j.id = ? ORDER BY g.x`);
    return {
      store,
      clone: async (id, model, n) => {
        insert.run(n, `${++clones}`, model, id);
        db.exec("ANALYZE");
      },
      close: async () => {
        db.close();
        await store.close();
        await rmDir();
        cleanups.delete(rmDir);
      },
    };
  },
};

function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? 0;
}

type Queue3 = "short" | "deep" | "deepOther";
const QUEUES: { key: Queue3; label: string }[] = [
  { key: "short", label: `only the ${CLAIMS * ROUNDS} to claim` },
  { key: "deep", label: `+${DEPTH} of its model behind` },
  { key: "deepOther", label: `+${DEPTH} of another model` },
];

/** Per queue shape, the p50 and p99 of each round's CLAIMS claims (ms), and the EXPLAIN of the deep queue's claim. */
async function claimLatency(backend: ClaimBackend): Promise<{ p50: Record<Queue3, number[]>; p99: Record<Queue3, number[]>; plan: string | undefined }> {
  const opened = await Promise.all(QUEUES.map(() => backend.open()));
  const stores = Object.fromEntries(QUEUES.map((q, k) => [q.key, opened[k]!])) as Record<Queue3, (typeof opened)[number]>;
  const out = { p50: { short: [], deep: [], deepOther: [] } as Record<Queue3, number[]>, p99: { short: [], deep: [], deepOther: [] } as Record<Queue3, number[]>, plan: undefined as string | undefined };
  try {
    const now = Date.now();
    for (const q of QUEUES) {
      const s = stores[q.key];
      const base = (await s.store.createJob(newJob(MODEL), now)).job.id;
      await s.clone(base, MODEL, CLAIMS * ROUNDS); // the ones claimed, oldest first
      if (q.key === "deep") await s.clone(base, MODEL, DEPTH);
      if (q.key === "deepOther") await s.clone(base, "not-served", DEPTH);
    }
    out.plan = await stores.deep.explain?.();
    const miner: MinerCapabilities = { minerId: "miner_bench", gpus: [], models: [MODEL] };
    for (let round = 0; round < ROUNDS; round++) {
      const order = round % 2 === 0 ? QUEUES : [...QUEUES].reverse();
      for (const q of order) {
        const times: number[] = [];
        for (let i = 0; i < CLAIMS; i++) {
          const t = performance.now();
          const a = await stores[q.key].store.claimNextJob(miner, Date.now(), 30_000);
          times.push(performance.now() - t);
          if (a === null) throw new Error(`${backend.name} ${q.key}: nothing to claim`);
        }
        out.p50[q.key].push(pct(times, 50));
        out.p99[q.key].push(pct(times, 99));
      }
    }
  } finally {
    for (const s of opened) await s.close();
  }
  return out;
}

// --- main

/** Why BullMQ cannot run here, or undefined: bullmq 6 loads its Redis client (ioredis) lazily, as an optional peer dependency. */
function bullmqMissing(): string | undefined {
  try {
    createRequire(createRequire(import.meta.url).resolve("bullmq")).resolve("ioredis");
    return undefined;
  } catch {
    return "bullmq 6 finds no Redis client: its optional peer dependency ioredis is not installed (npm install -D ioredis)";
  }
}

async function main(): Promise<void> {
  assertBuilt();
  const all: Side[] = [sqliteSide, pgSide(1), pgSide(3), bullSide(true), bullSide(false)];
  const wanted = process.env.BENCH_SIDES?.split(",") ?? all.map((s) => s.key);
  const noBull = bullmqMissing();
  if (noBull !== undefined && wanted.some((k) => k.startsWith("bullmq"))) process.stderr.write(`BullMQ sides NOT RUN: ${noBull}\n`);
  const sides = all.filter((s) => wanted.includes(s.key) && (noBull === undefined || !s.key.startsWith("bullmq")));
  const results = new Map<string, RunResult[]>(sides.map((s) => [s.key, []]));
  for (let round = 1; round <= ROUNDS; round++) {
    const order = round % 2 === 1 ? sides : [...sides].reverse();
    for (const side of order) {
      process.stderr.write(`round ${round}/${ROUNDS}: ${side.label}…`);
      const r = await runSide(side);
      process.stderr.write(` ${r.jobsPerSecond.toFixed(0)} jobs/s (${r.check})\n`);
      results.get(side.key)!.push(r);
    }
  }
  const claims: { name: string; r: Awaited<ReturnType<typeof claimLatency>> }[] = [];
  for (const backend of [pgClaims, sqliteClaims]) {
    process.stderr.write(`claim latency: ${backend.name}…\n`);
    claims.push({ name: backend.name, r: await claimLatency(backend) });
  }

  const jps = (key: string): number => median((results.get(key) ?? []).map((r) => r.jobsPerSecond));
  const ref = results.has("bullmq-aof") ? "bullmq-aof" : undefined;
  const lines = [
    `end-to-end jobs/s: submit over REST → a worker claims → result committed → client sees it completed`,
    `${JOBS} jobs per side per round after ${WARMUP} warm-up, ${CONCURRENCY} outstanding, ${MINERS} workers × ${SLOTS} slots, fake engine ${TOKENS} tokens at ${TPS} tok/s; median of ${ROUNDS} rounds, sides alternating (node ${process.version})`,
    "",
    `${"side".padEnd(30)}${"jobs/s".padStart(9)}${"min".padStart(8)}${"max".padStart(8)}${"job p50 ms".padStart(12)}${ref === undefined ? "" : "  vs bullmq aof".padStart(16)}`,
  ];
  for (const s of sides) {
    const rs = results.get(s.key)!;
    const xs = rs.map((r) => r.jobsPerSecond);
    lines.push(
      `${s.label.padEnd(30)}${jps(s.key).toFixed(0).padStart(9)}${Math.min(...xs).toFixed(0).padStart(8)}${Math.max(...xs).toFixed(0).padStart(8)}${median(rs.map((r) => r.p50)).toFixed(1).padStart(12)}${ref === undefined ? "" : `${(jps(s.key) / jps(ref)).toFixed(2)}×`.padStart(16)}`,
    );
  }
  lines.push("", "what each store held after its last round:");
  for (const s of sides) lines.push(`  ${s.label}: ${results.get(s.key)!.at(-1)!.check}`);
  const counted = sides.filter((s) => Object.keys(results.get(s.key)![0]!.perJob).length > 0);
  if (counted.length > 0) {
    lines.push("per job, PostgreSQL server-wide (pg_stat_database of this database, pg_stat_wal; other clients of the server count too), median over rounds:");
    for (const s of counted) {
      const keys = Object.keys(results.get(s.key)![0]!.perJob);
      lines.push(`  ${s.label}: ${keys.map((k) => `${median(results.get(s.key)!.map((r) => r.perJob[k] ?? 0)).toFixed(1)} ${k}`).join(", ")}`);
    }
  }
  const groups = ["servers", "workers", "store", "s3 server", "bench process", "host"];
  lines.push(
    "CPU per job (ms, user + system, median over rounds): servers = coordinators or the BullMQ front, workers = miners or BullMQ workers,",
    "store = PostgreSQL (every backend on the host) or Redis, s3 server = s3rver (pg sides), bench process = the driver, host = every process on the machine:",
    `  ${"".padEnd(28)}${groups.map((g) => g.padStart(15)).join("")}`,
  );
  for (const s of sides) {
    const rs = results.get(s.key)!;
    lines.push(`  ${s.label.padEnd(28)}${groups.map((g) => median(rs.map((r) => r.cpuPerJob[g] ?? 0)).toFixed(2).padStart(15)).join("")}`);
  }
  // The host is CPU-bound on every side (jobs/s × host ms a job ≈ 1000 × its cores): with the
  // coordinators' own CPU taken away, what the rest of a pg side costs a job still bounds its ratio.
  const hostMs = (key: string, group: string): number => median((results.get(key) ?? []).map((r) => r.cpuPerJob[group] ?? 0));
  if (ref !== undefined) {
    const ours = sides.filter((s) => s.key.startsWith("pg"));
    for (const s of ours) {
      const rest = hostMs(s.key, "host") - hostMs(s.key, "servers");
      const notOurs = rest - hostMs(s.key, "store");
      lines.push(
        `  ${s.label}: ${rest.toFixed(2)} ms a job outside the coordinators (host − servers) against bullmq aof's ${hostMs(ref, "host").toFixed(2)} for everything:` +
          ` even coordinators that cost nothing would leave it at most ${(hostMs(ref, "host") / rest).toFixed(2)}× on this host;` +
          ` ${notOurs.toFixed(2)} ms outside the coordinators and PostgreSQL (the S3 server, miners, driver, the rest of the host): at most ${(hostMs(ref, "host") / notOurs).toFixed(2)}× with both free`,
      );
    }
  }
  const staged = sides.filter((s) => results.get(s.key)![0]!.stages !== undefined);
  if (staged.length > 0) {
    lines.push("where a job's time goes on our sides (medians over jobs, then rounds; ms; stage times from the job's events):");
    lines.push(`  ${"".padEnd(28)}${"submit".padStart(8)}${"→assign".padStart(9)}${"→running".padStart(10)}${"→commit".padStart(9)}${"→seen".padStart(8)}`);
    for (const s of staged) {
      const st = (k: number): string => median(results.get(s.key)!.map((r) => r.stages![k]!)).toFixed(1);
      lines.push(`  ${s.label.padEnd(28)}${st(0).padStart(8)}${st(1).padStart(9)}${st(2).padStart(10)}${st(3).padStart(9)}${st(4).padStart(8)}`);
    }
  }
  lines.push(
    "",
    "BullMQ is driven through a REST front (one fastify process: POST → queue.add, GET …/wait → waitUntilFinished), no auth; ours through the coordinators' REST API with a client key, followed over SSE.",
    "pg sides: results in s3rver, in a process of its own; submits and results commit with synchronous_commit on, lease renewals asynchronously.",
  );
  lines.push("", `claim latency (the store's claimNextJob, one miner, in this process): ${CLAIMS} claims per queue per round, median over ${ROUNDS} rounds of each round's p50/p99, ms`);
  lines.push(`${"store".padEnd(10)}${"queue".padEnd(32)}${"p50".padStart(8)}${"p99".padStart(8)}${"p50 vs short".padStart(14)}${"p99 vs short".padStart(14)}`);
  for (const { name, r } of claims) {
    for (const q of QUEUES) {
      const p50 = median(r.p50[q.key]);
      const p99 = median(r.p99[q.key]);
      lines.push(
        `${name.padEnd(10)}${q.label.padEnd(32)}${p50.toFixed(2).padStart(8)}${p99.toFixed(2).padStart(8)}${`${(p50 / median(r.p50.short)).toFixed(2)}×`.padStart(14)}${`${(p99 / median(r.p99.short)).toFixed(2)}×`.padStart(14)}`,
      );
    }
    if (r.plan !== undefined) lines.push(`${name}, EXPLAIN of the claim's SELECT on the +${DEPTH} queue:\n  ${r.plan}`);
  }
  if (noBull !== undefined && wanted.some((k) => k.startsWith("bullmq"))) {
    lines.push("", `BullMQ sides NOT RUN: ${noBull}; no ratio against BullMQ in this run.`);
    process.exitCode = 1;
  }
  if (results.has("bullmq-aof") && results.has("pg3")) {
    lines.push("", `ratio postgres 3 replicas / bullmq aof always: ${(jps("pg3") / jps("bullmq-aof")).toFixed(2)} (target ≥ 1)`);
  }
  if (results.has("bullmq-mem") && results.has("pg3")) {
    lines.push(`ratio postgres 3 replicas / bullmq no persistence: ${(jps("pg3") / jps("bullmq-mem")).toFixed(2)}`);
  }
  process.stdout.write(`${lines.join("\n")}\n`);
}

for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.once(signal, () => {
    void cleanUpAll().finally(() => process.exit(130));
  });
}
try {
  await main();
} finally {
  await cleanUpAll();
}
