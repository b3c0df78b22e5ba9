import { spawn } from "node:child_process";
import path from "node:path";
import { CLI, Cluster, Proc, ROOT, waitFor } from "../e2e/cluster.js";
import { FaultProxy } from "./fault-proxy.js";

/**
 * Fault-injection rig: the e2e Cluster's coordinator child process (scheduler settings short),
 * plus miners (fake engine) that each reach the coordinator through their own FaultProxy, so a
 * test can delay, blackhole or cut one miner's link. Every fault and notable step goes to an
 * operation log, printed when a test fails.
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
