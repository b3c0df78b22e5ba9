import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { GetObjectCommand, ListObjectsV2Command, S3Client } from "@aws-sdk/client-s3";
import pg from "pg";
import { PostgresJobStore } from "../../src/coordinator/store/postgres/postgres-job-store.js";
import { PG_URL, freshSchema } from "../coordinator/pg-harness.js";
import { CLI, Proc, ROOT, freePort, waitFor } from "../e2e/cluster.js";
import { FaultProxy } from "../reliability/fault-proxy.js";
import { checkRecords, type InvariantReport, type JobRow } from "../reliability/invariants.js";
import type { LoggedEvent } from "../reliability/event-log.js";
import { startS3, startS3Child } from "../s3/s3-server.js";

/**
 * Several coordinator replicas as real child processes (`node dist/bin/aitbc.js coordinator`) on
 * one real PostgreSQL schema, results in a real S3-compatible server (s3rver), fake-engine miners
 * as child processes that dial a list of replicas (or a FaultProxy in front of one). Keys are made
 * straight in the database before anything starts. Every process's output is kept.
 */
export const BUCKET = "aitbc-results";
export const PREFIX = "cluster/";

export const REPLICA_SCHEDULER: Record<string, string> = {
  AITBC_COORDINATOR_SCHEDULER_LEASE_TTL: "2s",
  AITBC_COORDINATOR_SCHEDULER_HEARTBEAT: "300ms",
  AITBC_COORDINATOR_SCHEDULER_REAP_INTERVAL: "200ms",
  AITBC_COORDINATOR_SCHEDULER_REQUEUE_BACKOFF: "100ms",
  AITBC_COORDINATOR_LIMITS_REQUESTS_PER_MINUTE: "1000000",
  AITBC_COORDINATOR_LIMITS_REQUESTS_PER_HOUR: "1000000",
};

export interface Replica {
  name: string;
  port: number;
  url: string;
  wsUrl: string;
  proc: Proc;
}

export class ReplicaCluster {
  readonly replicas: Replica[] = [];
  readonly miners = new Map<string, Proc>();
  readonly proxies: FaultProxy[] = [];
  readonly all: Proc[] = [];
  clientKey = "";
  minerKey = "";
  private constructor(
    readonly dir: string,
    readonly schema: string,
    readonly s3Endpoint: string,
    /** The S3 server's own process, when it runs in one (start's `s3InChild`). */
    readonly s3Pid: number | undefined,
    private readonly cleanups: (() => Promise<void>)[],
  ) {}

  /** `s3InChild`: the S3 server in a process of its own (bench:cluster counts its CPU apart), not in this one. */
  static async start(replicas: number, env: Record<string, string> = {}, opts: { s3InChild?: boolean } = {}): Promise<ReplicaCluster> {
    const dir = mkdtempSync(path.join(tmpdir(), "aitbc-replicas-"));
    writeFileSync(path.join(dir, "coordinator.toml"), "");
    writeFileSync(path.join(dir, "miner.toml"), "");
    const s3 = opts.s3InChild === true ? await startS3Child([BUCKET]) : { ...(await startS3([BUCKET])), pid: undefined };
    const { schema, drop } = await freshSchema("cl");
    const c = new ReplicaCluster(dir, schema, s3.endpoint, s3.pid, [s3.close, drop, async () => rmSync(dir, { recursive: true, force: true })]);
    const store = await PostgresJobStore.open({ url: PG_URL, schema });
    try {
      c.clientKey = (await store.createKey("client", "cluster-client", "acme", Date.now())).key;
      c.minerKey = (await store.createKey("miner", "cluster-miner", "acme", Date.now())).key;
    } finally {
      await store.close();
    }
    for (let i = 0; i < replicas; i++) {
      const port = await freePort();
      c.replicas.push({ name: `r${i + 1}`, port, url: `http://127.0.0.1:${port}`, wsUrl: `ws://127.0.0.1:${port}/v1/miners/connect`, proc: undefined as unknown as Proc });
    }
    await Promise.all(c.replicas.map((r) => c.startReplica(r, env)));
    return c;
  }

  private spawn(label: string, args: string[], env: Record<string, string>): Proc {
    const child = spawn(process.execPath, [CLI, ...args], { cwd: ROOT, env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
    const p = new Proc(label, child);
    this.all.push(p);
    return p;
  }

  async startReplica(r: Replica, env: Record<string, string> = {}): Promise<void> {
    r.proc = this.spawn(`replica ${r.name}`, ["coordinator", "-c", path.join(this.dir, "coordinator.toml"), "--port", String(r.port), "--data-dir", path.join(this.dir, r.name), "--log-level", env.AITBC_COORDINATOR_LOG_LEVEL ?? "info"], {
      ...REPLICA_SCHEDULER,
      AITBC_COORDINATOR_STORAGE_BACKEND: "postgres",
      AITBC_COORDINATOR_STORAGE_URL: PG_URL,
      AITBC_COORDINATOR_STORAGE_SCHEMA: this.schema,
      AITBC_COORDINATOR_STORAGE_REPLICA: r.name,
      AITBC_COORDINATOR_RESULTS_BACKEND: "s3",
      AITBC_COORDINATOR_RESULTS_BUCKET: BUCKET,
      AITBC_COORDINATOR_RESULTS_PREFIX: PREFIX,
      AITBC_COORDINATOR_S3_ENDPOINT: this.s3Endpoint,
      AITBC_COORDINATOR_S3_ACCESS_KEY_ID: "S3RVER",
      AITBC_COORDINATOR_S3_SECRET_ACCESS_KEY: "S3RVER",
      ...env,
    });
    await waitFor(
      `replica ${r.name} ready`,
      async () => {
        if (!r.proc.running) throw new Error(`replica ${r.name} exited:\n${r.proc.output.slice(-2000)}`);
        return (await fetch(`${r.url}/readyz`, { signal: AbortSignal.timeout(5_000) })).status;
      },
      (s) => s === 200,
      30_000,
    );
  }

  /** A fake-engine miner dialling these URLs in turn. */
  startMiner(name: string, urls: string[], tokensPerSecond: number): Proc {
    const proc = this.spawn(`miner ${name}`, ["miner", "-c", path.join(this.dir, "miner.toml"), "--coordinator", urls.join(","), "--name", name, "--cpu"], {
      AITBC_MINER_COORDINATOR_KEY: this.minerKey,
      AITBC_MINER_COORDINATOR_RECONNECT_MIN: "100ms",
      AITBC_MINER_COORDINATOR_RECONNECT_MAX: "400ms",
      AITBC_MINER_MINER_PROGRESS_INTERVAL: "100ms",
      AITBC_MINER_MINER_DRAIN_GRACE: "1s",
      AITBC_MINER_INFERENCE_MODELS_DIR: path.join(ROOT, "models"),
      AITBC_MINER_FAKE_ENGINE_ENABLED: "true",
      AITBC_MINER_FAKE_ENGINE_TOKENS_PER_SECOND: String(tokensPerSecond),
    });
    this.miners.set(name, proc);
    return proc;
  }

  /** A FaultProxy in front of one replica, as a ws URL for a miner. */
  async proxyTo(r: Replica): Promise<{ proxy: FaultProxy; wsUrl: string }> {
    const proxy = new FaultProxy(r.port);
    await proxy.start();
    this.proxies.push(proxy);
    return { proxy, wsUrl: `${proxy.url}/v1/miners/connect` };
  }

  alive(): Replica[] {
    return this.replicas.filter((r) => r.proc.running);
  }

  /** A SQL query on the cluster's schema. */
  async sql<R extends pg.QueryResultRow>(text: string, params: unknown[] = []): Promise<R[]> {
    const c = new pg.Client({ connectionString: PG_URL, options: `-c search_path=${this.schema}` });
    await c.connect();
    try {
      return (await c.query<R>(text, params)).rows;
    } finally {
      await c.end();
    }
  }

  /** Live leases per replica (by the replica holding the miner's session now). */
  async leasesByReplica(): Promise<Map<string, number>> {
    const rows = await this.sql<{ replica: string; n: number }>(
      "SELECT m.replica, COUNT(*)::int AS n FROM jobs j JOIN miners m ON m.id = j.miner_id WHERE j.status IN ('assigned','running') AND m.connected GROUP BY m.replica",
    );
    return new Map(rows.map((r) => [r.replica, r.n]));
  }

  /** The invariants of the delivery guarantees on the PostgreSQL tables and the S3 objects. */
  async checkInvariants(accepted: Iterable<string>): Promise<InvariantReport & { objects: number }> {
    const jobs = await this.sql<JobRow>("SELECT id, status, attempt, result FROM jobs");
    const events = await this.sql<{ job_id: string; seq: number; type: string; data: Record<string, unknown>; at: number }>(
      "SELECT job_id, seq, type, data, at FROM job_events ORDER BY job_id, seq",
    );
    const byJob = new Map<string, LoggedEvent[]>();
    for (const e of events) {
      const list = byJob.get(e.job_id) ?? [];
      list.push({ jobId: e.job_id, seq: e.seq, type: e.type, data: e.data, at: Number(e.at) });
      byJob.set(e.job_id, list);
    }
    const s3 = new S3Client({ endpoint: this.s3Endpoint, region: "us-east-1", forcePathStyle: true, credentials: { accessKeyId: "S3RVER", secretAccessKey: "S3RVER" } });
    const objects = new Map<string, Buffer>();
    try {
      let token: string | undefined;
      do {
        const page = await s3.send(new ListObjectsV2Command({ Bucket: BUCKET, Prefix: PREFIX, ContinuationToken: token }));
        for (const o of page.Contents ?? []) {
          const got = await s3.send(new GetObjectCommand({ Bucket: BUCKET, Key: o.Key! }));
          objects.set(o.Key!.slice(PREFIX.length), Buffer.from(await got.Body!.transformToByteArray()));
        }
        token = page.IsTruncated === true ? page.NextContinuationToken : undefined;
      } while (token !== undefined);
    } finally {
      s3.destroy();
    }
    return { ...checkRecords(jobs, byJob, accepted, (location) => objects.get(location)), objects: objects.size };
  }

  tails(lines = 40): string {
    const noise = /"msg":"(incoming request|request completed)"/;
    return this.all.map((p) => `--- ${p.label} ---\n${p.output.split("\n").filter((l) => !noise.test(l)).slice(-lines).join("\n")}`).join("\n");
  }

  async close(): Promise<void> {
    await Promise.all(this.all.map((p) => p.kill("SIGKILL")));
    await Promise.all(this.proxies.map((p) => p.close()));
    for (const c of this.cleanups) await c().catch(() => undefined);
  }
}
