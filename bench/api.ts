/**
 * `npm run bench:api`: throughput and latency of the client REST API under load, next to the
 * framework ceiling on the same machine in the same run.
 *
 * - ours: `aitbc coordinator` as a child process over a fresh SQLite data dir (WAL,
 *   synchronous=FULL, so every submit is a durable commit), rate limits and the per-tenant queue
 *   cap raised through AITBC_COORDINATOR_* environment variables so the limiter never answers.
 * - peer: bare fastify (bench/api-peer.ts) in its own child process, constant JSON, no auth,
 *   no store: the most any fastify route can do here.
 * - load: autocannon in this process (a second process to both servers).
 *
 * Scenarios: GET status (ours: GET /v1/jobs/{id} with auth, store read, rate limiter; peer:
 * constant JSON) and POST submit (ours: POST /v1/jobs, validated, estimated, committed; peer:
 * constant 201). Rounds alternate peer and ours so load from other processes falls on both
 * alike; the table shows the median over rounds, and ends with the ratio ours/peer. It also
 * shows the server process's CPU per request (user + system from /proc over the run, divided
 * by the requests answered): a figure that moves less with the host than req/s does, since
 * autocannon and other processes share the cores.
 *
 * Both servers log at "warn" (the coordinator's per-request info lines would otherwise measure
 * pino's stdout). Environment: BENCH_SECONDS (per run, default 5), BENCH_ROUNDS (default 3),
 * BENCH_CONNECTIONS (default 32).
 */
import type { ChildProcess } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { createRequire } from "node:module";
import { createInterface } from "node:readline";
import { databasePath } from "../src/coordinator/coordinator.js";
import { SqliteJobStore } from "../src/coordinator/store/sqlite/sqlite-job-store.js";
import { cpuSeconds, median, startCoordinator, stopChild, tsx } from "./bench-support.js";

interface CannonResult {
  requests: { average: number; total: number };
  latency: { p50: number; p99: number };
  non2xx: number;
  errors: number;
  timeouts: number;
}
type Cannon = (opts: Record<string, unknown>) => Promise<CannonResult>;
const autocannon = createRequire(import.meta.url)("autocannon") as Cannon;

const ROOT = path.resolve(import.meta.dirname, "..");
const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const CONNECTIONS = Number(process.env.BENCH_CONNECTIONS ?? 32);

const SUBMIT_BODY = JSON.stringify({
  model: "gpt2",
  input: "Once upon a time",
  output_config: { destination: "local", format: "json" },
  requirements: { gpu_type: "v100", gpu_count: 1, min_vram_gb: 16 },
  priority: "normal",
  timeout_seconds: 3600,
});

async function startPeer(): Promise<{ child: ChildProcess; url: string }> {
  const child = tsx([path.join(ROOT, "bench/api-peer.ts")]);
  const lines = createInterface({ input: child.stdout! });
  for await (const line of lines) {
    const { port } = JSON.parse(line) as { port: number };
    return { child, url: `http://127.0.0.1:${port}` };
  }
  throw new Error("peer exited before listening");
}

function startOurs(dataDir: string): Promise<{ child: ChildProcess; url: string }> {
  return startCoordinator(dataDir, {
    AITBC_COORDINATOR_LIMITS_REQUESTS_PER_MINUTE: "1000000000",
    AITBC_COORDINATOR_LIMITS_REQUESTS_PER_HOUR: "1000000000",
    AITBC_COORDINATOR_LIMITS_MAX_QUEUED_JOBS_PER_TENANT: "1000000000",
  });
}

/** One run against a server; `cpuUs` is that server's CPU per request answered. */
async function load(server: ChildProcess, url: string, method: "GET" | "POST", headers: Record<string, string>, body?: string): Promise<CannonResult & { cpuUs: number }> {
  const cpu0 = cpuSeconds(server.pid!);
  const r = await autocannon({ url, method, headers, connections: CONNECTIONS, duration: SECONDS, ...(body === undefined ? {} : { body }) });
  const cpuUs = ((cpuSeconds(server.pid!) - cpu0) * 1e6) / Math.max(1, r.requests.total);
  if (r.non2xx > 0 || r.errors > 0 || r.timeouts > 0) {
    throw new Error(`${method} ${url}: ${r.non2xx} non-2xx, ${r.errors} errors, ${r.timeouts} timeouts`);
  }
  return { ...r, cpuUs };
}

async function main(): Promise<void> {
  const dataDir = await mkdtemp(path.join(tmpdir(), "aitbc-bench-api-"));
  // The key is made before the coordinator starts, straight in its store (what `aitbc keys create` does).
  const keyStore = new SqliteJobStore(databasePath(dataDir));
  const { key } = await keyStore.createKey("client", "bench", "bench", Date.now());
  await keyStore.close();

  const peer = await startPeer();
  const ours = await startOurs(dataDir);
  const auth = { authorization: `Bearer ${key}`, "content-type": "application/json" };
  const results: Record<string, (CannonResult & { cpuUs: number })[]> = { "status peer": [], "status ours": [], "submit peer": [], "submit ours": [] };
  try {
    const first = await fetch(`${ours.url}/v1/jobs`, { method: "POST", headers: auth, body: SUBMIT_BODY });
    const { job_id: jobId } = (await first.json()) as { job_id: string };
    // Warm-up (JIT, SQLite page cache) not counted.
    await autocannon({ url: `${ours.url}/v1/jobs/${jobId}`, headers: auth, connections: CONNECTIONS, duration: 1 });
    await autocannon({ url: `${peer.url}/peer/${jobId}`, connections: CONNECTIONS, duration: 1 });
    for (let round = 1; round <= ROUNDS; round++) {
      process.stderr.write(`round ${round}/${ROUNDS}\n`);
      results["status peer"]!.push(await load(peer.child, `${peer.url}/peer/${jobId}`, "GET", {}));
      results["status ours"]!.push(await load(ours.child, `${ours.url}/v1/jobs/${jobId}`, "GET", auth));
      results["submit peer"]!.push(await load(peer.child, `${peer.url}/peer`, "POST", { "content-type": "application/json" }, SUBMIT_BODY));
      results["submit ours"]!.push(await load(ours.child, `${ours.url}/v1/jobs`, "POST", auth, SUBMIT_BODY));
    }
  } finally {
    await stopChild(ours.child);
    await stopChild(peer.child);
    await rm(dataDir, { recursive: true, force: true });
  }

  const row = (name: string): { rps: number; p50: number; p99: number; cpuUs: number } => {
    const rs = results[name]!;
    return {
      rps: median(rs.map((r) => r.requests.average)),
      p50: median(rs.map((r) => r.latency.p50)),
      p99: median(rs.map((r) => r.latency.p99)),
      cpuUs: median(rs.map((r) => r.cpuUs)),
    };
  };
  const lines = [
    `client API under load: ${CONNECTIONS} connections, ${SECONDS}s per run, median of ${ROUNDS} rounds (node ${process.version})`,
    "",
    `${"scenario".padEnd(14)}${"req/s".padStart(10)}${"p50 ms".padStart(9)}${"p99 ms".padStart(9)}${"server CPU µs/req".padStart(19)}`,
  ];
  for (const name of Object.keys(results)) {
    const r = row(name);
    lines.push(`${name.padEnd(14)}${r.rps.toFixed(0).padStart(10)}${r.p50.toFixed(1).padStart(9)}${r.p99.toFixed(1).padStart(9)}${r.cpuUs.toFixed(1).padStart(19)}`);
  }
  const ratio = (kind: string): string => (row(`${kind} ours`).rps / row(`${kind} peer`).rps).toFixed(2);
  const cpuRatio = (kind: string): string => (row(`${kind} peer`).cpuUs / row(`${kind} ours`).cpuUs).toFixed(2);
  lines.push(
    "",
    `server CPU per request, peer/ours: status ${cpuRatio("status")}, submit ${cpuRatio("submit")}`,
    `ratio ours/peer (req/s): status ${ratio("status")}, submit ${ratio("submit")}`,
  );
  process.stdout.write(`${lines.join("\n")}\n`);
}

await main();
