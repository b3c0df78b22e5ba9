import { createRequire } from "node:module";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { Worker } from "node:worker_threads";
import { AppError, ConfigError, ModelError } from "../common/errors.js";
import type { Logger } from "../common/logger.js";
import type { InferenceConfig } from "./config.js";
import type { DecodeResult } from "./batch-decoder.js";
import type { Engine, EngineModelInfo, GenerateRequest, GenerateResult } from "./engine.js";
import { loadModelInfo, type ModelInfo } from "./models/model-info.js";
import { decideThreadSpinning, type DeviceRequest, type SessionSettings } from "./session-factory.js";
import { TextAssembler } from "./text-assembler.js";
import { Tokenizer } from "./tokenizer.js";
import type { FromWorker, LoadedModelSummary, ToWorker, WireError, WorkerModelSpec } from "./worker-protocol.js";

/** inference.max_batch's default. */
const DEFAULT_MAX_BATCH = 8;

export interface OnnxEngineOptions {
  log: Logger;
}

/*
 * Lifecycle: "new" → initialize() → "loading" → "ready" → close() → "closing" → "closed".
 * A failed initialize() closes what it started and ends "closed"; close() is idempotent.
 */
type EngineState = "new" | "loading" | "ready" | "closing" | "closed";

interface LoadedModel {
  info: ModelInfo;
  tokenizer: Tokenizer;
}

interface Pending {
  request: GenerateRequest;
  text: TextAssembler;
  maxTokens: number;
  promptTokens: number;
  /** Set to 1 to make the worker stop before its next step. */
  cancel: Int32Array;
  startedAt: number;
  firstTokenAt: number | undefined;
  resolve: (result: GenerateResult) => void;
  reject: (err: AppError) => void;
}

/**
 * One worker thread per device (each CUDA device id in the config, or the CPU), holding a
 * session for every configured model, loaded once and shared by all requests on that device.
 */
class DeviceWorker {
  readonly worker: Worker;
  readonly pending = new Map<number, Pending>();
  models: LoadedModelSummary[] = [];
  exited = false;
  private loading: { resolve: (m: LoadedModelSummary[]) => void; reject: (e: AppError) => void } | undefined;
  private onExit: (() => void) | undefined;

  constructor(
    readonly device: DeviceRequest,
    private readonly log: Logger,
  ) {
    this.worker = spawnWorker();
    this.worker.on("message", (msg: FromWorker) => this.onMessage(msg));
    this.worker.on("error", (err) => this.failAll(new AppError("engine_worker_failed", "the inference worker failed", { retryable: true, cause: err })));
    this.worker.on("exit", (code) => {
      this.exited = true;
      this.onExit?.();
      this.failAll(new AppError("engine_worker_failed", "the inference worker exited", { retryable: true, details: { exit_code: code } }));
    });
  }

  load(models: WorkerModelSpec[], settings: SessionSettings, maxBatch: number): Promise<LoadedModelSummary[]> {
    return new Promise((resolve, reject) => {
      this.loading = { resolve, reject };
      this.post({ type: "load", models, device: this.device, settings, maxBatch });
    });
  }

  post(msg: ToWorker): void {
    this.worker.postMessage(msg);
  }

  async close(graceMs: number): Promise<void> {
    if (this.exited) return;
    for (const p of this.pending.values()) Atomics.store(p.cancel, 0, 1);
    const exited = new Promise<void>((resolve) => (this.onExit = resolve));
    this.post({ type: "close" });
    const timer = setTimeout(() => void this.worker.terminate(), graceMs);
    await exited;
    clearTimeout(timer);
  }

  private onMessage(msg: FromWorker): void {
    switch (msg.type) {
      case "loaded":
        this.models = msg.models;
        this.loading?.resolve(msg.models);
        this.loading = undefined;
        return;
      case "load_failed":
        this.loading?.reject(fromWire(msg.error));
        this.loading = undefined;
        return;
      case "token":
        this.onToken(msg.id, msg.tokenId, msg.count);
        return;
      case "done": {
        const p = this.pending.get(msg.id);
        if (p === undefined) return;
        this.pending.delete(msg.id);
        p.resolve(finish(msg.result, p));
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

  private onToken(id: number, tokenId: number, count: number): void {
    const p = this.pending.get(id);
    // Tokens the worker made after a stop sequence was seen (it stops within a step) are dropped.
    if (p === undefined || p.text.stoppedAtToken !== undefined) return;
    const now = performance.now();
    p.firstTokenAt ??= now;
    const delta = p.text.push(tokenId, count, count >= p.maxTokens);
    if (p.text.stoppedAtToken !== undefined) Atomics.store(p.cancel, 0, 1);
    const seconds = (now - p.firstTokenAt) / 1000;
    try {
      p.request.onToken?.({ delta, tokens: count, maxTokens: p.maxTokens, tokensPerSecond: seconds > 0 ? (count - 1) / seconds : 0 });
    } catch (err) {
      this.log.warn({ err }, "token callback threw");
    }
  }

  private failAll(err: AppError): void {
    this.loading?.reject(err);
    this.loading = undefined;
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
  }
}

/**
 * The real engine: onnxruntime-node sessions in worker threads (session.run blocks the thread
 * it runs on), GPT-2-class models in Hugging Face optimum layout, CUDA with CPU fallback.
 * Tokenizing, detokenizing and stop sequences happen here on the main thread; workers turn
 * prompt ids into token ids.
 *
 * Context length: a prompt of n_positions tokens or more is refused (`prompt_too_long`, 422);
 * otherwise max_new_tokens is clamped to n_positions − prompt tokens (TokenEvent.maxTokens
 * shows the clamp) and reaching it ends with "length". An empty prompt starts from the
 * end-of-text token, as GPT-2 does for unconditional generation.
 *
 * The miner creates it from its config:
 * `new OnnxEngine(compileInferenceConfig(raw.inference, selectedGpuIds), { log })`, then
 * `await engine.initialize()` before taking jobs and `await engine.close()` on shutdown.
 */
export class OnnxEngine implements Engine {
  private state: EngineState = "new";
  private workers: DeviceWorker[] = [];
  private readonly loaded = new Map<string, LoadedModel>();
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
    const out: EngineModelInfo[] = [];
    for (const [name, m] of this.loaded) {
      const devices = this.workers.flatMap((w) => w.models.filter((s) => s.name === name).map((s) => s.device));
      out.push({ name, device: devices.join(","), n_positions: m.info.nPositions });
    }
    return out;
  }

  generate(request: GenerateRequest): Promise<GenerateResult> {
    if (this.state !== "ready") return Promise.reject(new AppError("engine_not_ready", "the engine is not initialized", { retryable: true }));
    const model = this.loaded.get(request.model);
    const hosts = this.workers.filter((w) => w.models.some((m) => m.name === request.model));
    if (model === undefined || hosts.length === 0) {
      return Promise.reject(new ModelError("model_not_loaded", "the model is not loaded by this engine", { model: request.model }));
    }
    // A worker that died (native crash, out of memory) takes no more work; the miner sees the error and can stop.
    const candidates = hosts.filter((w) => !w.exited);
    if (candidates.length === 0) return Promise.reject(new AppError("engine_worker_failed", "the inference worker exited", { retryable: true }));
    const startedAt = performance.now();
    let promptIds = model.tokenizer.encode(request.prompt);
    if (promptIds.length === 0) promptIds = [model.tokenizer.eosTokenId];
    const nPositions = model.info.nPositions;
    if (promptIds.length >= nPositions) {
      return Promise.reject(new ModelError("prompt_too_long", "the prompt does not fit the model's context", { prompt_tokens: promptIds.length, n_positions: nPositions }));
    }
    const maxTokens = Math.min(request.params.max_new_tokens, nPositions - promptIds.length);
    // Least busy device first: a device's generations share its decode steps (up to max_batch).
    const worker = candidates.reduce((a, b) => (b.pending.size < a.pending.size ? b : a));
    const id = this.nextId++;
    const cancelFlag = new SharedArrayBuffer(4);
    const cancel = new Int32Array(cancelFlag);
    const signal = request.signal;
    const onAbort = (): void => void Atomics.store(cancel, 0, 1);
    if (signal?.aborted) onAbort();
    signal?.addEventListener("abort", onAbort, { once: true });
    const { temperature, top_k, top_p, repetition_penalty, seed, stop } = request.params;
    const text = new TextAssembler((ids) => model.tokenizer.decode(ids), model.tokenizer.eosTokenId, stop);

    return new Promise<GenerateResult>((resolve, reject) => {
      worker.pending.set(id, { request, text, maxTokens, promptTokens: promptIds.length, cancel, startedAt, firstTokenAt: undefined, resolve, reject });
      worker.post({ type: "generate", id, model: request.model, promptIds, maxTokens, sampling: { temperature, top_k, top_p, repetition_penalty }, seed, cancelFlag });
    }).finally(() => signal?.removeEventListener("abort", onAbort));
  }

  async close(): Promise<void> {
    if (this.state === "closed" || this.state === "closing") return;
    if (this.state === "loading") await this.initializing?.catch(() => undefined);
    // A failed initialize() has already closed everything.
    if ((this.state as EngineState) === "closed") return;
    this.state = "closing";
    await Promise.all(this.workers.map((w) => w.close(5_000)));
    this.workers = [];
    this.loaded.clear();
    this.state = "closed";
    this.log.info("engine closed");
  }

  private async start(): Promise<void> {
    this.state = "loading";
    // Decided before anything loads, so the measurement sees the host, not this start-up.
    const spin = await decideThreadSpinning(this.config.threadSpinning ?? "auto");
    this.log.info({ thread_spinning: spin.spinning, ...(spin.othersCpuLoad === undefined ? {} : { other_processes_cpus: Number(spin.othersCpuLoad.toFixed(2)) }) }, "onnxruntime thread spinning");
    const settings: SessionSettings = {
      executionProvider: this.config.executionProvider,
      intraOpThreads: this.config.intraOpThreads,
      interOpThreads: this.config.interOpThreads,
      graphOptimizationLevel: this.config.graphOptimizationLevel,
      threadSpinning: spin.spinning,
    };
    try {
      const specs: WorkerModelSpec[] = [];
      for (const name of this.config.models) {
        const info = loadModelInfo(path.resolve(this.config.modelsDir, name));
        if (info.kvType !== "float32") throw new ModelError("model_unsupported", "the model has a float16 KV cache, which this engine does not run", { model: name });
        const tokenizer = await Tokenizer.load(info.dir);
        this.loaded.set(name, { info, tokenizer });
        const { onnxPath, nLayer, nHead, headDim, vocabSize, lastLogitsOnly, newKeyValues } = info;
        specs.push({ name, onnxPath, nLayer, nHead, headDim, vocabSize, eosTokenId: tokenizer.eosTokenId, lastLogitsOnly, newKeyValues });
      }
      for (const device of this.devices()) {
        const worker = new DeviceWorker(device, this.log);
        this.workers.push(worker);
        const models = await worker.load(specs, settings, this.config.maxBatch ?? DEFAULT_MAX_BATCH);
        for (const m of models) {
          if (m.fallbackReason !== undefined) this.log.warn({ model: m.name, device: deviceName(device), reason: m.fallbackReason }, "CUDA unavailable, running on the CPU");
          this.log.info({ model: m.name, device: m.device }, "model loaded");
        }
        // Several GPUs that all fell back would each hold a CPU copy competing for the same cores: keep one.
        const onCpu = (w: DeviceWorker): boolean => w.models.every((m) => m.device === "cpu");
        if (onCpu(worker) && this.workers.slice(0, -1).some(onCpu)) {
          this.workers.pop();
          await worker.close(5_000);
        }
      }
    } catch (err) {
      await Promise.all(this.workers.map((w) => w.close(5_000)));
      this.workers = [];
      this.loaded.clear();
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

function finish(r: DecodeResult, p: Pending): GenerateResult {
  const stoppedAt = p.text.stoppedAtToken;
  // Cancelled without a stop: the held-back text is still part of what was generated.
  if (stoppedAt === undefined && r.finishReason === "cancelled") p.text.end(r.tokenIds.length);
  const tokenIds = stoppedAt === undefined ? r.tokenIds : r.tokenIds.slice(0, stoppedAt);
  const completion = tokenIds.length;
  return {
    text: p.text.result,
    finish_reason: p.text.finishReason(r.finishReason),
    usage: { prompt_tokens: p.promptTokens, completion_tokens: completion },
    timing: {
      time_to_first_token_ms: p.firstTokenAt === undefined ? 0 : p.firstTokenAt - p.startedAt,
      tokens_per_second: r.decodeSeconds > 0 && completion > 1 ? (r.tokenIds.length - 1) / r.decodeSeconds : 0,
      total_ms: performance.now() - p.startedAt,
    },
    token_ids: tokenIds,
  };
}

function fromWire(e: WireError): AppError {
  return new AppError(e.code, e.message, { status: 422, retryable: e.retryable, ...(e.details === undefined ? {} : { details: e.details }) });
}

/**
 * The worker file sits next to this module: compiled .js under dist/ in production, .ts under
 * vitest and tsx. Node 20 does not apply `--import tsx` from a worker's execArgv to its entry
 * module, so for .ts a small bootstrap registers tsx's loader in the worker first.
 */
function spawnWorker(): Worker {
  const self = import.meta.url;
  if (!self.endsWith(".ts")) return new Worker(new URL("./inference-worker.js", self), { execArgv: [] });
  const tsxApi = pathToFileURL(path.join(path.dirname(createRequire(self).resolve("tsx/package.json")), "dist", "esm", "api", "index.mjs")).href;
  const entry = new URL("./inference-worker.ts", self).href;
  const bootstrap = `import(${JSON.stringify(tsxApi)}).then((api) => { api.register(); return import(${JSON.stringify(entry)}); });`;
  return new Worker(bootstrap, { eval: true, execArgv: [] });
}
