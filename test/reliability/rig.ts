import { execFileSync, spawn } from "node:child_process";
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { errorMessage } from "../../src/common/errors.js";
import { CLI, Cluster, Proc, ROOT, waitFor } from "../e2e/cluster.js";
import { FaultProxy } from "./fault-proxy.js";

/**
 * Fault-injection rig: the e2e Cluster's coordinator child process (scheduler settings short),
 * plus miners (fake engine) that each reach the coordinator through their own FaultProxy, so a
 * test can delay, blackhole or cut one miner's link. Every fault and notable step goes to an
 * operation log. When a test fails, `failureReport()` prints the tails and writes everything in
 * full to a directory (AITBC_TEST_LOGS_DIR, or a kept temp dir): see writeLogs.
 */
export const RELIABILITY_SCHEDULER: Record<string, string> = {
  AITBC_COORDINATOR_SCHEDULER_LEASE_TTL: "1500ms",
  AITBC_COORDINATOR_SCHEDULER_HEARTBEAT: "300ms",
  AITBC_COORDINATOR_SCHEDULER_REAP_INTERVAL: "200ms",
  AITBC_COORDINATOR_SCHEDULER_REQUEUE_BACKOFF: "100ms",
};

export interface RigMinerOptions {
  name: string;
  tokensPerSecond: number;
  /** Extra AITBC_MINER_* variables (fake-engine faults). */
  env?: Record<string, string>;
}

export interface RigMiner {
  name: string;
  proc: Proc;
  proxy: FaultProxy;
  options: RigMinerOptions;
}

export class Rig {
  readonly ops: string[] = [];
  readonly miners = new Map<string, RigMiner>();
  private readonly procs: Proc[] = [];
  private readonly t0 = Date.now();

  private constructor(readonly cluster: Cluster) {}

  static async start(coordinatorEnv: Record<string, string> = {}, options: { dataDir?: string } = {}): Promise<Rig> {
    const rig = new Rig(await Cluster.start({ ...RELIABILITY_SCHEDULER, ...coordinatorEnv }, options));
    rig.op("coordinator started");
    return rig;
  }

  op(what: string): void {
    this.ops.push(`+${Date.now() - this.t0}ms ${what}`);
  }

  /** Starts a miner behind its own proxy (kept across restarts); resolves once it is connected. */
  async startMiner(o: RigMinerOptions, waitConnected = true): Promise<RigMiner> {
    const c = this.cluster;
    const existing = this.miners.get(o.name);
    let proxy = existing?.proxy;
    if (proxy === undefined) {
      proxy = new FaultProxy(c.port);
      await proxy.start();
    }
    const env: Record<string, string> = {
      AITBC_MINER_COORDINATOR_KEY: c.minerKey,
      AITBC_MINER_COORDINATOR_RECONNECT_MIN: "100ms",
      AITBC_MINER_COORDINATOR_RECONNECT_MAX: "300ms",
      AITBC_MINER_MINER_PROGRESS_INTERVAL: "100ms",
      AITBC_MINER_MINER_DRAIN_GRACE: "1s",
      AITBC_MINER_INFERENCE_MODELS_DIR: path.join(ROOT, "models"),
      AITBC_MINER_FAKE_ENGINE_ENABLED: "true",
      AITBC_MINER_FAKE_ENGINE_TOKENS_PER_SECOND: String(o.tokensPerSecond),
      ...o.env,
    };
    const child = spawn(process.execPath, [CLI, "miner", "--coordinator", proxy.url, "--name", o.name, "--cpu"], {
      cwd: ROOT,
      env: { ...process.env, ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    const proc = new Proc(`miner ${o.name}`, child);
    this.procs.push(proc);
    const m: RigMiner = { name: o.name, proc, proxy, options: o };
    this.miners.set(o.name, m);
    this.op(`miner ${o.name} started`);
    if (waitConnected) {
      const before = c.connectedCount(o.name);
      await waitFor(
        `miner ${o.name} connected`,
        () => {
          if (!proc.running) throw new Error(`miner ${o.name} exited:\n${proc.output.slice(-2000)}`);
          return Promise.resolve(c.connectedCount(o.name));
        },
        (n) => n > before,
        30_000,
      );
    }
    return m;
  }

  async killMiner(name: string): Promise<void> {
    const m = this.miners.get(name);
    if (m === undefined) return;
    await m.proc.kill("SIGKILL");
    this.op(`miner ${name} SIGKILL`);
  }

  async restartMiner(name: string, waitConnected = true): Promise<RigMiner> {
    const m = this.miners.get(name);
    if (m === undefined) throw new Error(`no miner ${name}`);
    if (m.proc.running) await this.killMiner(name);
    return this.startMiner(m.options, waitConnected);
  }

  async restartCoordinator(): Promise<void> {
    await this.cluster.coordinator?.kill("SIGKILL");
    this.op("coordinator SIGKILL");
    await this.cluster.startCoordinator();
    this.op("coordinator restarted");
  }

  /** Stops every process (SIGKILL) so the database can be read as it was left. */
  async stopAll(): Promise<void> {
    await Promise.all([...this.procs.map((p) => p.kill("SIGKILL")), this.cluster.coordinator?.kill("SIGKILL")]);
    this.op("all stopped");
  }

  /** Coordinator log lines (all coordinator runs) with this msg. */
  coordinatorLogs(msg: string): Record<string, unknown>[] {
    // Cluster keeps only the current coordinator handle; earlier runs' output is in tails().
    return (this.cluster.coordinator?.logs() ?? []).filter((l) => l.msg === msg);
  }

  /**
   * For a failing test, before close(): writes the full logs (writeLogs) and returns the tails
   * with the directory's path.
   */
  async failureReport(testName: string): Promise<string> {
    let where: string;
    try {
      where = await this.writeLogs(testName);
    } catch (err) {
      where = `(not written: ${errorMessage(err)})`;
    }
    return `${this.report()}\n--- full logs of every process: ${where} ---`;
  }

  /**
   * Writes, while everything is still as the failure left it: every child's complete output
   * (each coordinator run, killed ones included, and each miner run) with its pid, start and
   * exit; each proxy's state and event log; the operation log; a snapshot of the processes and
   * sockets (is the coordinator alive, does it answer, what its listening socket holds); and a
   * copy of the data dir. Under $AITBC_TEST_LOGS_DIR when set, else a new dir in the OS temp
   * dir (the cluster's own temp dir is removed by close()). Returns the path.
   */
  async writeLogs(testName: string): Promise<string> {
    const slug = testName.replace(/[^a-z0-9]+/gi, "-").slice(0, 60);
    const base = process.env.AITBC_TEST_LOGS_DIR;
    let dir: string;
    if (base === undefined || base === "") dir = mkdtempSync(path.join(tmpdir(), `aitbc-failure-${slug}-`));
    else {
      dir = path.join(base, `${slug}-${new Date().toISOString().replace(/[:.]/g, "-")}`);
      mkdirSync(dir, { recursive: true });
    }
    writeFileSync(path.join(dir, "snapshot.txt"), await this.snapshot());
    const iso = (ms: number): string => new Date(ms).toISOString();
    const procs = [...this.cluster.processes, ...this.procs];
    procs.sort((a, b) => a.startedAt - b.startedAt);
    procs.forEach((p, i) => {
      const exit = p.exit === undefined ? "running" : `exited at ${iso(p.exit.at)} code=${p.exit.code} signal=${p.exit.signal}`;
      const header = `# ${p.label} pid=${p.child.pid} started ${iso(p.startedAt)} (+${p.startedAt - this.t0}ms), ${exit}\n`;
      writeFileSync(path.join(dir, `${String(i).padStart(3, "0")}-${p.label.replace(/[^a-z0-9]+/gi, "-")}.log`), header + p.output);
    });
    writeFileSync(path.join(dir, "operations.log"), `t0 ${iso(this.t0)}\n${this.ops.join("\n")}\n`);
    for (const m of this.miners.values()) {
      writeFileSync(path.join(dir, `proxy-${m.name}.log`), `${JSON.stringify(m.proxy.state(), null, 2)}\n${m.proxy.events.join("\n")}\n`);
    }
    if (existsSync(this.cluster.dataDir)) cpSync(this.cluster.dataDir, path.join(dir, "data"), { recursive: true });
    return dir;
  }

  /** Processes and sockets right now: each child's kernel state, the coordinator's answer, ss. */
  private async snapshot(): Promise<string> {
    const out: string[] = [`at ${new Date().toISOString()}`];
    const running = [this.cluster.coordinator, ...this.procs].filter((p): p is Proc => p?.running === true);
    for (const p of running) {
      const pid = p.child.pid;
      let status = "";
      try {
        status = readFileSync(`/proc/${pid}/status`, "utf8").split("\n").filter((l) => /^(State|Threads|VmRSS):/.test(l)).join(" ");
        status += ` wchan=${readFileSync(`/proc/${pid}/wchan`, "utf8")}`;
      } catch (err) {
        status = `(no /proc: ${errorMessage(err)})`;
      }
      out.push(`${p.label} pid=${pid}: ${status}`);
    }
    const probe = async (urlPath: string): Promise<string> => {
      const t = Date.now();
      try {
        const res = await fetch(`${this.cluster.baseUrl}${urlPath}`, { signal: AbortSignal.timeout(3_000) });
        return `${urlPath} → ${res.status} in ${Date.now() - t}ms: ${(await res.text()).slice(0, 300)}`;
      } catch (err) {
        const cause = err instanceof Error && err.cause instanceof Error ? ` (${err.cause.message})` : "";
        return `${urlPath} → no answer after ${Date.now() - t}ms: ${errorMessage(err)}${cause}`;
      }
    };
    out.push(await probe("/healthz"), await probe("/readyz"));
    // Sockets of the coordinator's port and the proxies' ports only (the box is shared).
    const ports = [this.cluster.port, ...[...this.miners.values()].map((m) => m.proxy.port)];
    const filter = ports.map((p) => `sport = :${p} or dport = :${p}`).join(" or ");
    for (const args of [["-tanpi", filter], ["-ltnpi", `sport = :${this.cluster.port}`]]) {
      try {
        out.push(`$ ss ${args.join(" ")}`, execFileSync("ss", args, { encoding: "utf8", timeout: 5_000 }).replace(/[ \t]+$/gm, ""));
      } catch (err) {
        out.push(`ss ${args.join(" ")} failed: ${errorMessage(err)}`);
      }
    }
    return `${out.join("\n")}\n`;
  }

  report(): string {
    const miners = this.procs.map((p) => `--- ${p.label} ---\n${p.output.split("\n").slice(-30).join("\n")}`).join("\n");
    return `--- operations ---\n${this.ops.join("\n")}\n${this.cluster.tails()}\n${miners}`;
  }

  async close(): Promise<void> {
    await this.stopAll();
    await Promise.all([...this.miners.values()].map((m) => m.proxy.close()));
    await this.cluster.close();
  }
}
