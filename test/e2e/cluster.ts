import { spawn, type ChildProcess } from "node:child_process";
import { chmodSync, existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { errorMessage } from "../../src/common/errors.js";
import { databasePath } from "../../src/coordinator/coordinator.js";
import { SqliteJobStore } from "../../src/coordinator/store/sqlite/sqlite-job-store.js";

/**
 * End-to-end harness: the coordinator and miners as real child processes (`node dist/bin/aitbc.js`)
 * on a real port, with a temp data dir, keys created in the store before the coordinator starts,
 * and a stand-in nvidia-smi per miner so each one reports the GPUs of a recorded fixture.
 * Every child's output is kept (tail shown when a test fails); `close()` kills them all.
 */
export const ROOT = path.join(import.meta.dirname, "..", "..");
export const CLI = path.join(ROOT, "dist", "bin", "aitbc.js");
const SMI_FIXTURES = path.join(ROOT, "test", "fixtures", "nvidia-smi");

/** Scheduler settings short enough for tests; each test may override. */
export const FAST_SCHEDULER: Record<string, string> = {
  AITBC_COORDINATOR_SCHEDULER_LEASE_TTL: "2s",
  AITBC_COORDINATOR_SCHEDULER_HEARTBEAT: "500ms",
  AITBC_COORDINATOR_SCHEDULER_REAP_INTERVAL: "200ms",
  AITBC_COORDINATOR_SCHEDULER_REQUEUE_BACKOFF: "100ms",
  // Tests poll; the client rate limit is not what they exercise.
  AITBC_COORDINATOR_LIMITS_REQUESTS_PER_MINUTE: "100000",
  AITBC_COORDINATOR_LIMITS_REQUESTS_PER_HOUR: "1000000",
};

export function assertBuilt(): void {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run npm run build`);
}

/** A port nothing listens on right now (bound on port 0, then released). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const addr = s.address();
      const port = typeof addr === "object" && addr !== null ? addr.port : 0;
      s.close(() => resolve(port));
    });
  });
}

/** Polls `fn` until `ok` holds, or throws with the last value after `timeoutMs`. */
/** Longest a test's REST call waits for its answer. */
const API_TIMEOUT_MS = 10_000;

export async function waitFor<T>(what: string, fn: () => Promise<T>, ok: (v: T) => boolean, timeoutMs = 20_000, everyMs = 50): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: T | undefined;
  let lastErr: unknown;
  while (Date.now() < deadline) {
    try {
      last = await fn();
      if (ok(last)) return last;
    } catch (err) {
      lastErr = err;
    }
    await sleep(everyMs);
  }
  throw new Error(`timed out waiting for ${what}; last: ${JSON.stringify(last)}${lastErr === undefined ? "" : ` (${errorMessage(lastErr)})`}`);
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export class Proc {
  /** Both streams as they arrived (for substring checks and a failing test's report). */
  output = "";
  /** Each stream on its own: warn and above go to stderr, so a line of one may arrive in pieces around the other's. */
  private readonly streams = { stdout: "", stderr: "" };
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  readonly startedAt = Date.now();
  /** How and when it ended, once it has (for a failing test's full logs). */
  exit: { code: number | null; signal: NodeJS.Signals | null; at: number } | undefined;

  constructor(
    readonly label: string,
    readonly child: ChildProcess,
  ) {
    for (const name of ["stdout", "stderr"] as const) {
      child[name]?.on("data", (d: Buffer) => {
        const text = d.toString();
        this.output += text;
        this.streams[name] += text;
      });
    }
    this.exited = new Promise((resolve) =>
      child.on("exit", (code, signal) => {
        this.exit = { code, signal, at: Date.now() };
        resolve({ code, signal });
      }),
    );
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Parsed JSON log lines (pino). */
  logs(): Record<string, unknown>[] {
    const out: Record<string, unknown>[] = [];
    for (const line of `${this.streams.stdout}\n${this.streams.stderr}`.split("\n")) {
      if (!line.startsWith("{")) continue;
      try {
        out.push(JSON.parse(line) as Record<string, unknown>);
      } catch {
        // a partly written line
      }
    }
    // The two streams in the order the lines were written (pino's time; a sort keeps ties in place).
    return out.sort((a, b) => (typeof a.time === "number" && typeof b.time === "number" ? a.time - b.time : 0));
  }

  async kill(signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    if (this.running) this.child.kill(signal);
    await this.exited;
  }
}

export interface MinerOptions {
  name: string;
  /** nvidia-smi fixture file name; undefined = CPU miner. */
  gpus?: string;
  /** Fake engine at this many tokens/s; undefined = the real OnnxEngine. */
  fakeTokensPerSecond?: number;
  env?: Record<string, string>;
}

export interface ApiResponse<T = Record<string, unknown>> {
  status: number;
  body: T;
  headers: Headers;
}

export interface SseEvent {
  event: string;
  id?: number;
  data: Record<string, unknown>;
}

export class Cluster {
  readonly dir: string;
  readonly dataDir: string;
  port = 0;
  clientKey = "";
  minerKey = "";
  coordinator: Proc | undefined;
  readonly miners = new Map<string, Proc>();
  private readonly all: Proc[] = [];

  /** Every child this cluster started, in start order: each coordinator run (killed ones too) and miner. */
  get processes(): readonly Proc[] {
    return this.all;
  }

  /** `dataDir`: where the coordinator keeps its state (default: inside the cluster's temp dir). */
  constructor(
    readonly coordinatorEnv: Record<string, string> = {},
    dataDir?: string,
  ) {
    this.dir = mkdtempSync(path.join(tmpdir(), "aitbc-e2e-"));
    this.dataDir = dataDir ?? path.join(this.dir, "data");
    // Empty config files: the repo's config/*.toml (edited by others) must not leak into the tests.
    writeFileSync(path.join(this.dir, "coordinator.toml"), "");
    writeFileSync(path.join(this.dir, "miner.toml"), "");
  }

  get baseUrl(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  get wsUrl(): string {
    return `ws://127.0.0.1:${this.port}/v1/miners/connect`;
  }

  /** Creates a client key and a miner key in the store, then starts the coordinator. */
  static async start(coordinatorEnv: Record<string, string> = {}, options: { dataDir?: string } = {}): Promise<Cluster> {
    const c = new Cluster(coordinatorEnv, options.dataDir);
    const store = new SqliteJobStore(databasePath(c.dataDir));
    try {
      c.clientKey = (await store.createKey("client", "e2e-client", "default", Date.now())).key;
      c.minerKey = (await store.createKey("miner", "e2e-miner", "default", Date.now())).key;
    } finally {
      await store.close();
    }
    c.port = await freePort();
    await c.startCoordinator();
    return c;
  }

  private spawn(label: string, args: string[], env: Record<string, string>): Proc {
    const child = spawn(process.execPath, [CLI, ...args], {
      cwd: ROOT,
      env: { ...process.env, ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    const p = new Proc(label, child);
    this.all.push(p);
    return p;
  }

  /** Starts (or restarts) the coordinator on the same port and data dir; resolves once /readyz says ready. */
  async startCoordinator(): Promise<Proc> {
    const p = this.spawn("coordinator", ["coordinator", "-c", path.join(this.dir, "coordinator.toml"), "--port", String(this.port), "--data-dir", this.dataDir, "--log-level", "info"], {
      ...FAST_SCHEDULER,
      ...this.coordinatorEnv,
    });
    this.coordinator = p;
    await waitFor(
      "coordinator /readyz",
      async () => {
        if (!p.running) throw new Error(`coordinator exited:\n${p.output.slice(-2000)}`);
        // A coordinator that accepts the connection but never answers must not hold the wait past its deadline.
        return (await fetch(`${this.baseUrl}/readyz`, { signal: AbortSignal.timeout(API_TIMEOUT_MS) })).status;
      },
      (s) => s === 200,
      30_000,
    );
    return p;
  }

  /** Starts a miner child; resolves once the coordinator lists it as connected. */
  async startMiner(o: MinerOptions): Promise<{ proc: Proc; minerId: string }> {
    const env: Record<string, string> = {
      AITBC_MINER_COORDINATOR_KEY: this.minerKey,
      AITBC_MINER_COORDINATOR_RECONNECT_MIN: "100ms",
      AITBC_MINER_COORDINATOR_RECONNECT_MAX: "500ms",
      AITBC_MINER_MINER_PROGRESS_INTERVAL: "100ms",
      AITBC_MINER_MINER_DRAIN_GRACE: "1s",
      AITBC_MINER_INFERENCE_MODELS_DIR: path.join(ROOT, "models"),
      ...(o.fakeTokensPerSecond === undefined
        ? {}
        : { AITBC_MINER_FAKE_ENGINE_ENABLED: "true", AITBC_MINER_FAKE_ENGINE_TOKENS_PER_SECOND: String(o.fakeTokensPerSecond) }),
      ...(o.gpus === undefined ? {} : { AITBC_MINER_GPUS_NVIDIA_SMI: this.fakeNvidiaSmi(o.gpus) }),
      ...o.env,
    };
    const args = ["miner", "-c", path.join(this.dir, "miner.toml"), "--coordinator", this.baseUrl, "--name", o.name];
    if (o.gpus === undefined) args.push("--cpu");
    const proc = this.spawn(`miner ${o.name}`, args, env);
    this.miners.set(o.name, proc);
    const before = this.connectedCount(o.name);
    await waitFor(
      `miner ${o.name} connected`,
      () => {
        // Seen connected counts even when it is gone since (a test may kill it on its first job).
        const n = this.connectedCount(o.name);
        if (n <= before && !proc.running) throw new Error(`miner ${o.name} exited:\n${proc.output.slice(-2000)}`);
        return Promise.resolve(n);
      },
      (n) => n > before,
      30_000,
    );
    return { proc, minerId: this.minerId(o.name) };
  }

  /** How many "miner connected" lines the current coordinator logged for this name. */
  connectedCount(name: string): number {
    return (this.coordinator?.logs() ?? []).filter((l) => l.msg === "miner connected" && l.name === name).length;
  }

  /** The miner id the coordinator gave a miner name (from its log). */
  minerId(name: string): string {
    for (const p of this.all) {
      if (p.label !== "coordinator") continue;
      const line = p.logs().find((l) => l.msg === "miner connected" && l.name === name);
      if (line !== undefined && typeof line.minerId === "string") return line.minerId;
    }
    throw new Error(`no "miner connected" log line for ${name}`);
  }

  private fakeNvidiaSmi(fixture: string): string {
    const file = path.join(this.dir, `nvidia-smi-${fixture.replace(/[^a-z0-9]/gi, "_")}`);
    writeFileSync(file, `#!/bin/sh\ncat '${path.join(SMI_FIXTURES, fixture)}'\n`);
    chmodSync(file, 0o755);
    return file;
  }

  async api<T = Record<string, unknown>>(method: string, urlPath: string, body?: unknown, key = this.clientKey): Promise<ApiResponse<T>> {
    const res = await fetch(`${this.baseUrl}${urlPath}`, {
      method,
      headers: { authorization: `Bearer ${key}`, ...(body === undefined ? {} : { "content-type": "application/json" }) },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      // An answer that never comes fails the call (a waitFor retries it and keeps its own deadline)
      // instead of holding the test until its timeout with nothing said.
      signal: AbortSignal.timeout(API_TIMEOUT_MS),
    });
    const text = await res.text();
    let parsed: unknown = text;
    try {
      parsed = JSON.parse(text);
    } catch {
      // not JSON
    }
    return { status: res.status, body: parsed as T, headers: res.headers };
  }

  async submit(body: Record<string, unknown>): Promise<string> {
    const r = await this.api("POST", "/v1/jobs", body);
    if (r.status !== 201) throw new Error(`submit answered ${r.status}: ${JSON.stringify(r.body)}`);
    return r.body.job_id as string;
  }

  async job(id: string): Promise<Record<string, unknown>> {
    const r = await this.api("GET", `/v1/jobs/${id}`);
    if (r.status !== 200) throw new Error(`GET job answered ${r.status}`);
    return r.body;
  }

  waitForJob(id: string, ok: (j: Record<string, unknown>) => boolean, what: string, timeoutMs = 30_000): Promise<Record<string, unknown>> {
    return waitFor(`job ${id}: ${what}`, () => this.job(id), ok, timeoutMs);
  }

  /**
   * Reads the job's SSE stream from the start until it ends (after the terminal state) or
   * `timeoutMs`; returns every event. With a finished job this is its whole event log.
   */
  async events(id: string, timeoutMs = 30_000, onEvent?: (e: SseEvent) => void): Promise<SseEvent[]> {
    const ac = new AbortController();
    const timer = setTimeout(() => ac.abort(), timeoutMs);
    const out: SseEvent[] = [];
    try {
      const res = await fetch(`${this.baseUrl}/v1/jobs/${id}/events`, {
        headers: { authorization: `Bearer ${this.clientKey}`, accept: "text/event-stream" },
        signal: ac.signal,
      });
      if (res.status !== 200 || res.body === null) throw new Error(`events answered ${res.status}`);
      for await (const e of readSse(res.body)) {
        out.push(e);
        onEvent?.(e);
      }
    } catch (err) {
      if (!ac.signal.aborted) throw err;
    } finally {
      clearTimeout(timer);
    }
    return out;
  }

  /** The last lines of every child's output, for a failing test's report. */
  tails(lines = 40): string {
    const noise = /"msg":"(incoming request|request completed)"/;
    return this.all
      .map((p) => `--- ${p.label} ---\n${p.output.split("\n").filter((l) => !noise.test(l)).slice(-lines).join("\n")}`)
      .join("\n");
  }

  /** Kills every child (SIGKILL) and keeps the data dir, so the store can be read as they left it. */
  async stop(): Promise<void> {
    await Promise.all(this.all.map((p) => p.kill("SIGKILL")));
  }

  async close(): Promise<void> {
    await this.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** The events of a Server-Sent Events body, as they arrive. */
export async function* readSse(body: ReadableStream<Uint8Array>): AsyncGenerator<SseEvent> {
  const decoder = new TextDecoder();
  let buf = "";
  for await (const chunk of body as unknown as AsyncIterable<Uint8Array>) {
    buf += decoder.decode(chunk, { stream: true });
    let i: number;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const e = parseSse(buf.slice(0, i));
      buf = buf.slice(i + 2);
      if (e !== undefined) yield e;
    }
  }
}

function parseSse(block: string): SseEvent | undefined {
  let event = "message";
  let id: number | undefined;
  const data: string[] = [];
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) continue;
    if (line.startsWith("event: ")) event = line.slice(7);
    else if (line.startsWith("id: ")) id = Number(line.slice(4));
    else if (line.startsWith("data: ")) data.push(line.slice(6));
  }
  if (data.length === 0) return undefined;
  return { event, ...(id === undefined ? {} : { id }), data: JSON.parse(data.join("\n")) as Record<string, unknown> };
}
