import { createRequire } from "node:module";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { Worker } from "node:worker_threads";
import { AppError, ConfigError } from "../common/errors.js";
import type { Logger } from "../common/logger.js";
import type { InferenceConfig } from "./config.js";
import type { Engine, EngineModelInfo, GenerateRequest, GenerateResult } from "./engine.js";
import type { DeviceRequest, SessionSettings } from "./session-factory.js";
import type { FromWorker, LoadedModelSummary, ToWorker, WireError, WorkerGenerationResult } from "./worker-protocol.js";

export interface OnnxEngineOptions {
  log: Logger;
}

/*
 * Lifecycle: "new" → initialize() → "loading" → "ready" → close() → "closing" → "closed".
 * A failed initialize() closes what it started and leaves "closed"; close() is idempotent.
 */
type EngineState = "new" | "loading" | "ready" | "closing" | "closed";

interface Pending {
  request: GenerateRequest;
  /** Set to 1 to make the worker stop this generation before its next step. */
  cancel: Int32Array;
  startedAt: number;
  firstTokenAt: number | undefined;
  resolve: (result: GenerateResult) => void;
  reject: (err: AppError) => void;
}

/**
 * One worker thread per device: each CUDA device id in the config (or the CPU), each holding
 * a session for every configured model, loaded once and shared by all requests on it.
 */
class DeviceWorker {
  readonly worker: Worker;
  readonly pending = new Map<number, Pending>();
  models: LoadedModelSummary[] = [];
  private loaded: { resolve: (m: LoadedModelSummary[]) => void; reject: (e: AppError) => void } | undefined;
  private closed: (() => void) | undefined;
  exited = false;

  constructor(
    readonly device: DeviceRequest,
    private readonly log: Logger,
  ) {
    this.worker = spawnWorker();
    this.worker.on("message", (msg: FromWorker) => this.onMessage(msg));
    this.worker.on("error", (err) => this.failAll(new AppError("engine_worker_failed", "the inference worker failed", { retryable: true, cause: err })));
    this.worker.on("exit", (code) => {
      this.exited = true;
      this.closed?.();
      if (this.pending.size > 0 || this.loaded !== undefined) {
        this.failAll(new AppError("engine_worker_failed", "the inference worker exited", { retryable: true, details: { exit_code: code } }));
      }
    });
  }

  load(models: { name: string; dir: string }[], settings: SessionSettings): Promise<LoadedModelSummary[]> {
    return new Promise((resolve, reject) => {
      this.loaded = { resolve, reject };
      this.post({ type: "load", models, device: this.device, settings });
    });
  }

  post(msg: ToWorker): void {
    this.worker.postMessage(msg);
  }

  async close(graceMs: number): Promise<void> {
    if (this.exited) return;
    const exited = new Promise<void>((resolve) => (this.closed = resolve));
    this.post({ type: "close" });
    const timer = setTimeout(() => void this.worker.terminate(), graceMs);
    await exited;
    clearTimeout(timer);
  }

  private onMessage(msg: FromWorker): void {
    switch (msg.type) {
      case "loaded":
        this.models = msg.models;
        this.loaded?.resolve(msg.models);
        this.loaded = undefined;
        return;
      case "load_failed":
        this.loaded?.reject(fromWire(msg.error));
        this.loaded = undefined;
        return;
      case "token": {
        const p = this.pending.get(msg.id);
        if (p === undefined) return;
        p.firstTokenAt ??= performance.now();
        try {
          p.request.onToken?.({ delta: msg.delta, tokens: msg.tokens, maxTokens: msg.maxTokens, tokensPerSecond: msg.tokensPerSecond });
        } catch (err) {
          this.log.warn({ err }, "token callback threw");
        }
        return;
      }
      case "done": {
        const p = this.pending.get(msg.id);
        if (p === undefined) return;
        this.pending.delete(msg.id);
        p.resolve(toResult(msg.result, p));
        return;
      }
      case "failed": {
        const p = this.pending.get(msg.id);
        if (p === undefined) return;
        this.pending.delete(msg.id);
        p.reject(fromWire(msg.error));
        return;
      }
      case "closed":
        return;
    }
  }

  private failAll(err: AppError): void {
    this.loaded?.reject(err);
    this.loaded = undefined;
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
  }
}

/**
 * The real engine: onnxruntime-node sessions in worker threads (session.run blocks the thread
 * it runs on), GPT-2-class models in Hugging Face optimum layout, CUDA with CPU fallback.
 *
 * The miner creates it from its config:
 * `new OnnxEngine(compileInferenceConfig(raw.inference, selectedGpuIds), { log })`, then
 * `await engine.initialize()` before taking jobs and `await engine.close()` on shutdown.
 */
export class OnnxEngine implements Engine {
  private state: EngineState = "new";
  private workers: DeviceWorker[] = [];
  private initializing: Promise<void> | undefined;
  private nextId = 1;
  private readonly log: Logger;

  constructor(
    private readonly config: InferenceConfig,
    options: OnnxEngineOptions,
  ) {
    this.log = options.log;
  }

  initialize(): Promise<void> {
    this.initializing ??= this.start();
    return this.initializing;
  }

  models(): EngineModelInfo[] {
    const byName = new Map<string, EngineModelInfo>();
    for (const w of this.workers) {
      for (const m of w.models) {
        const known = byName.get(m.name);
        if (known === undefined) byName.set(m.name, { name: m.name, device: m.device, n_positions: m.nPositions });
        else known.device = `${known.device},${m.device}`;
      }
    }
    return [...byName.values()];
  }

  generate(request: GenerateRequest): Promise<GenerateResult> {
    if (this.state !== "ready") return Promise.reject(new AppError("engine_not_ready", "the engine is not initialized", { retryable: true }));
    const candidates = this.workers.filter((w) => w.models.some((m) => m.name === request.model));
    if (candidates.length === 0) {
      return Promise.reject(new AppError("model_not_loaded", "the model is not loaded by this engine", { status: 422, details: { model: request.model } }));
    }
    // Least busy device first: generations on one device run one after another.
    const worker = candidates.reduce((a, b) => (b.pending.size < a.pending.size ? b : a));
    const id = this.nextId++;
    const cancelFlag = new SharedArrayBuffer(4);
    const flag = new Int32Array(cancelFlag);
    const signal = request.signal;
    const onAbort = (): void => void Atomics.store(flag, 0, 1);
    if (signal?.aborted) onAbort();
    signal?.addEventListener("abort", onAbort, { once: true });

    return new Promise<GenerateResult>((resolve, reject) => {
      worker.pending.set(id, { request, cancel: flag, startedAt: performance.now(), firstTokenAt: undefined, resolve, reject });
      worker.post({ type: "generate", id, model: request.model, prompt: request.prompt, params: request.params, cancelFlag });
    }).finally(() => signal?.removeEventListener("abort", onAbort));
  }

  async close(): Promise<void> {
    if (this.state === "closed" || this.state === "closing") return;
    this.state = "closing";
    // Stop what is running: a closing engine must not hold the process for a long generation.
    for (const w of this.workers) for (const p of w.pending.values()) Atomics.store(p.cancel, 0, 1);
    await Promise.all(this.workers.map((w) => w.close(5_000)));
    this.workers = [];
    this.state = "closed";
    this.log.info("engine closed");
  }

  private async start(): Promise<void> {
    this.state = "loading";
    const settings: SessionSettings = {
      executionProvider: this.config.executionProvider,
      intraOpThreads: this.config.intraOpThreads,
      interOpThreads: this.config.interOpThreads,
      graphOptimizationLevel: this.config.graphOptimizationLevel,
    };
    const models = this.config.models.map((name) => ({ name, dir: path.resolve(this.config.modelsDir, name) }));
    try {
      for (const device of this.devices()) {
        const worker = new DeviceWorker(device, this.log);
        this.workers.push(worker);
        const loaded = await worker.load(models, settings);
        for (const m of loaded) {
          if (m.fallbackReason !== undefined) this.log.warn({ model: m.name, device: deviceName(device), reason: m.fallbackReason }, "CUDA unavailable, running on the CPU");
          this.log.info({ model: m.name, device: m.device }, "model loaded");
        }
        // Several GPUs that all fell back would each hold a CPU copy competing for the same cores: keep one.
        if (loaded.every((m) => m.device === "cpu") && this.workers.slice(0, -1).some((w) => w.models.every((m) => m.device === "cpu"))) {
          this.workers.pop();
          await worker.close(5_000);
        }
      }
    } catch (err) {
      await Promise.all(this.workers.map((w) => w.close(5_000)));
      this.workers = [];
      this.state = "closed";
      throw err;
    }
    this.state = "ready";
  }

  private devices(): DeviceRequest[] {
    const { executionProvider, deviceIds } = this.config;
    if (executionProvider === "cpu") return [{ kind: "cpu" }];
    if (deviceIds.length === 0) {
      if (executionProvider === "cuda") throw new ConfigError("execution_provider is cuda but no GPU is selected", { key: "inference.execution_provider" });
      this.log.warn({ reason: "no GPU selected" }, "CUDA unavailable, running on the CPU");
      return [{ kind: "cpu" }];
    }
    return deviceIds.map((deviceId) => ({ kind: "cuda", deviceId }));
  }
}

function deviceName(d: DeviceRequest): string {
  return d.kind === "cpu" ? "cpu" : `cuda:${d.deviceId}`;
}

function toResult(r: WorkerGenerationResult, p: Pending): GenerateResult {
  const now = performance.now();
  const completion = r.tokenIds.length;
  return {
    text: r.text,
    finish_reason: r.finishReason,
    usage: { prompt_tokens: r.promptTokens, completion_tokens: completion },
    timing: {
      time_to_first_token_ms: p.firstTokenAt === undefined ? 0 : p.firstTokenAt - p.startedAt,
      tokens_per_second: r.decodeSeconds > 0 ? (completion - 1) / r.decodeSeconds : 0,
      total_ms: now - p.startedAt,
    },
    token_ids: r.tokenIds,
  };
}

function fromWire(e: WireError): AppError {
  return new AppError(e.code, e.message, { status: 422, retryable: e.retryable, ...(e.details === undefined ? {} : { details: e.details }) });
}

/**
 * The worker file sits next to this module: compiled .js under dist/ in production, .ts under
 * vitest and tsx, where the worker needs tsx's loader to run TypeScript.
 */
function spawnWorker(): Worker {
  const self = import.meta.url;
  if (!self.endsWith(".ts")) return new Worker(new URL("./inference-worker.js", self), { execArgv: [] });
  // Node 20 does not apply `--import tsx` from a worker's execArgv to its entry module, so a
  // small bootstrap registers tsx's loader in the worker and then imports the TypeScript file.
  const tsxApi = pathToFileURL(path.join(path.dirname(createRequire(self).resolve("tsx/package.json")), "dist", "esm", "api", "index.mjs")).href;
  const entry = new URL("./inference-worker.ts", self).href;
  const bootstrap = `import(${JSON.stringify(tsxApi)}).then((api) => { api.register(); return import(${JSON.stringify(entry)}); });`;
  return new Worker(bootstrap, { eval: true, execArgv: [] });
}
