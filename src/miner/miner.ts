import { randomBytes } from "node:crypto";
import { EventEmitter } from "node:events";
import { Backoff } from "../common/backoff.js";
import type { Logger } from "../common/logger.js";
import { packageVersion } from "../common/package-info.js";
import type { MinerMetrics } from "./miner-metrics.js";
import type { GpuLoadSampler } from "./gpu/gpu-load.js";
import type { Engine } from "../inference/engine.js";
import type { CoordinatorFrame, GpuInfo, HeartbeatFrame, HelloFrame, WelcomeFrame } from "../protocol/frames.js";
import { PROTOCOL_VERSION } from "../protocol/version.js";
import type { MinerConfig } from "./config.js";
import { MinerConnection } from "./connection.js";
import { minerConcurrency, type Concurrency } from "./default-concurrency.js";
import { JobRunner } from "./job-runner.js";

/**
 * The miner daemon's lifecycle:
 *
 *   starting ──engine ready──▶ connecting ──welcome──▶ ready
 *                                  ▲                     │ connection lost
 *                                  └─────────────────────┘
 *   any state ──stop()──▶ draining ──jobs finished or grace over, rest released──▶ stopped
 *
 * While `ready` it pulls whenever it has free slots (after the welcome and each time a job
 * ends). Jobs keep running while `connecting`; their results wait for the next connection.
 * `draining`: no new jobs (pull{free_slots:0}, stray assigns handed back), running ones get
 * `drain_grace` to finish, whatever is left is aborted and handed back with `released`, then
 * the connection and the engine are closed, in that order.
 */
export type MinerState = "starting" | "connecting" | "ready" | "draining" | "stopped";

export interface MinerOptions {
  config: MinerConfig;
  engine: Engine;
  /** GPUs in use (after detection and selection); empty for a CPU miner. */
  gpus: GpuInfo[];
  log: Logger;
  /** Software version in hello; default package.json's. */
  version?: string;
  backoff?: Backoff;
  /** Where job outcomes and engine load time are counted; none by default. */
  metrics?: MinerMetrics;
  /** Reads the GPUs' load for heartbeats (protocol 5); none for a CPU miner. */
  gpuLoad?: GpuLoadSampler;
  /** Jobs at once and why, as the CLI logged them; default: minerConcurrency(config, gpus). */
  concurrency?: Concurrency;
}

export interface MinerEvents {
  state: [{ from: MinerState; to: MinerState }];
  /** The engine failed for good; the miner is stopping itself. */
  fatal: [{ code: string }];
}

/**
 * Engine errors after which the engine cannot run anything more (its worker thread is gone):
 * the miner stops, handing back its jobs, so that systemd restarts it with a fresh engine,
 * instead of failing every job it pulls.
 */
const FATAL_ENGINE_CODES = new Set(["engine_worker_failed", "engine_not_ready"]);

/** How long stop() waits for acknowledgements of the last results before closing. */
const FINAL_ACK_WAIT_MS = 5_000;

export class Miner extends EventEmitter<MinerEvents> {
  private current: MinerState = "starting";
  private readonly log: Logger;
  private readonly runner: JobRunner;
  private readonly connection: MinerConnection;
  /** Set by a coordinator `drain` frame; cleared by the next welcome. */
  private intakePaused = false;
  /** The protocol this connection speaks: the welcome's `protocol_version` (absent from a protocol 3 coordinator). */
  private protocol = 3;
  private stopping: Promise<void> | undefined;
  /** Set when the miner stopped itself because the engine died; the CLI exits non-zero. */
  fatalError: string | undefined;
  readonly slots: number;
  /** Why `slots` is what it is (the config, or the hardware it was chosen from). */
  readonly slotsReason: string;
  /** Random per process start (hello.instance_id): tells this process from another host with the same key and name. */
  readonly instanceId = randomBytes(12).toString("base64url");

  constructor(private readonly options: MinerOptions) {
    super();
    const { config } = options;
    this.log = options.log.child({ component: "miner", instanceId: this.instanceId });
    const concurrency = options.concurrency ?? minerConcurrency(config, options.gpus);
    this.slots = concurrency.slots;
    this.slotsReason = concurrency.reason;
    this.runner = new JobRunner({
      engine: options.engine,
      send: (f) => this.connection.send(f),
      log: options.log.child({ component: "job-runner" }),
      slots: this.slots,
      progressIntervalMs: config.miner.progressIntervalMs,
      ...(config.miner.streamText ? { text: { enabled: () => this.protocol >= 4, intervalMs: config.miner.textIntervalMs, maxTokens: config.miner.textMaxTokens } } : {}),
      onSlotFreed: () => this.pull(),
      onEngineError: (code) => this.onEngineError(code),
      onJobEnded: (outcome, tokens, tps) => options.metrics?.jobEnded(outcome, tokens, tps),
    });
    this.connection = new MinerConnection({
      urls: config.coordinator.urls,
      key: config.coordinator.key,
      log: options.log,
      connectTimeoutMs: config.coordinator.connectTimeoutMs,
      backoff:
        options.backoff ?? new Backoff({ baseMs: config.coordinator.reconnectMinMs, maxMs: config.coordinator.reconnectMaxMs }),
      hello: () => this.hello(),
      heartbeat: () => this.heartbeat(),
      duplicateRetryMs: Math.max(config.coordinator.reconnectMaxMs, config.coordinator.reconnectMinMs),
    });
    this.connection.on("welcome", (w) => this.onWelcome(w));
    this.connection.on("frame", (f) => this.onFrame(f));
    this.connection.on("disconnected", () => {
      if (this.current === "ready") this.transition("connecting");
    });
  }

  get state(): MinerState {
    return this.current;
  }

  /** Jobs running now. */
  get running(): number {
    return this.runner.running;
  }

  /** Jobs held: running, or finished with the final frame unacknowledged. */
  inFlight(): ReturnType<JobRunner["inFlight"]> {
    return this.runner.inFlight();
  }

  /** Initializes the engine and starts connecting; resolves once the engine is ready. */
  async start(): Promise<void> {
    if (this.current !== "starting") return;
    const loadStart = performance.now();
    await this.options.engine.initialize();
    this.options.metrics?.engineLoadSeconds.set((performance.now() - loadStart) / 1000);
    if (this.current !== "starting") return; // stop() during initialize
    this.log.info(
      { slots: this.slots, slotsReason: this.slotsReason, gpus: this.options.gpus.length, models: this.options.engine.models().map((m) => m.name) },
      "miner started",
    );
    this.transition("connecting");
    this.options.gpuLoad?.start();
    this.connection.start();
  }

  /**
   * Drains and stops. Idempotent: later calls return the first call's promise. `graceMs`
   * defaults to the config's drain_grace; 0 hands running jobs back at once.
   */
  stop(options: { graceMs?: number } = {}): Promise<void> {
    this.stopping ??= this.drainAndClose(options.graceMs ?? this.options.config.miner.drainGraceMs);
    return this.stopping;
  }

  private async drainAndClose(graceMs: number): Promise<void> {
    this.transition("draining");
    this.connection.send({ type: "pull", free_slots: 0 });
    const running = this.runner.running;
    if (running > 0) {
      this.log.info({ running, graceMs }, "waiting for running jobs to finish");
      const finished = await this.runner.waitIdle(graceMs);
      if (!finished) {
        this.log.warn({ running: this.runner.running }, "grace period over: handing back running jobs");
        this.runner.release("shutdown");
      }
    }
    await this.runner.allDone();
    if (this.runner.tracked > 0 && this.connection.ready) {
      const acked = await this.runner.waitIdle(FINAL_ACK_WAIT_MS, "tracked");
      if (!acked) this.log.warn({ unacknowledged: this.runner.tracked }, "closing with unacknowledged results");
    }
    await this.connection.close();
    this.options.gpuLoad?.stop();
    await this.options.engine.close();
    this.transition("stopped");
  }

  private transition(to: MinerState): void {
    const from = this.current;
    if (from === to || from === "stopped") return;
    this.current = to;
    this.log.info({ from, to }, "miner state");
    this.emit("state", { from, to });
  }

  private hello(): HelloFrame {
    return {
      type: "hello",
      protocol_version: PROTOCOL_VERSION,
      instance_id: this.instanceId,
      miner_name: this.options.config.miner.name,
      version: this.options.version ?? packageVersion(),
      gpus: this.options.gpus,
      models: this.options.engine.models().map((m) => m.name),
      slots: this.slots,
      free_slots: this.runner.freeSlots,
      in_flight: this.runner.inFlight(),
    };
  }

  private heartbeat(): HeartbeatFrame {
    const frame: HeartbeatFrame = { type: "heartbeat", in_flight: this.runner.inFlight(), free_slots: this.intakeOpen() ? this.runner.freeSlots : 0 };
    // Protocol 4 coordinators parse heartbeats strictly: only 5 and later hear of GPU load.
    const load = this.options.gpuLoad?.current ?? [];
    if (this.protocol >= 5 && load.length > 0) frame.gpus = load;
    return frame;
  }

  private intakeOpen(): boolean {
    return this.current === "ready" && !this.intakePaused;
  }

  private pull(): void {
    if (!this.intakeOpen()) return;
    const free = this.runner.freeSlots;
    if (free > 0) this.connection.send({ type: "pull", free_slots: free });
  }

  private onEngineError(code: string): void {
    if (!FATAL_ENGINE_CODES.has(code) || this.fatalError !== undefined) return;
    this.fatalError = code;
    this.log.error({ code }, "engine is unusable: stopping the miner");
    this.emit("fatal", { code });
    // Whatever is still running on a dead engine will not finish: hand it back now.
    void this.stop({ graceMs: 0 });
  }

  private onWelcome(w: WelcomeFrame): void {
    this.intakePaused = false;
    this.protocol = Math.min(PROTOCOL_VERSION, w.protocol_version ?? 3);
    if (w.resumed.length > 0 || w.refused.length > 0) {
      this.log.info({ resumed: w.resumed.length, refused: w.refused.length }, "leases after reconnect");
    }
    this.runner.welcome(w);
    if (this.current === "connecting") this.transition("ready");
    if (this.current === "draining") this.connection.send({ type: "pull", free_slots: 0 });
    this.pull();
  }

  private onFrame(frame: CoordinatorFrame): void {
    switch (frame.type) {
      case "assign":
        if (this.intakeOpen()) this.runner.assign(frame);
        else this.runner.handBack(frame, this.current === "draining" ? "draining" : this.intakePaused ? "coordinator_drain" : "not_ready");
        return;
      case "cancel":
        this.runner.cancel(frame);
        return;
      case "ack":
        this.runner.ack(frame);
        return;
      case "drain":
        this.log.info({ reason: frame.reason }, "coordinator asked to stop pulling");
        this.intakePaused = true;
        return;
      case "error":
      case "welcome":
        return;
    }
  }
}
