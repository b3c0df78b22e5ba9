import { readFileSync } from "node:fs";
import { hostname } from "node:os";
import path from "node:path";
import { Type, type Static } from "@sinclair/typebox";
import { Duration, compileField, configError, loadConfig, type ConfigProblem, type LoadConfigOptions } from "../common/config.js";
import { ConfigError, errorMessage } from "../common/errors.js";
import { formatDuration, parseDuration } from "../common/duration.js";
import { LOG_FORMATS, type LogFormat } from "../common/log-format.js";
import type { LogLevel } from "../common/logger.js";
import { InferenceConfigSchema, type InferenceConfigRaw } from "../inference/config.js";

/**
 * config/miner.toml: raw schema (as written in the file) → {@link MinerConfig} (compiled, in
 * milliseconds and resolved paths). Environment variables: AITBC_MINER_<SECTION>_<KEY>, e.g.
 * AITBC_MINER_COORDINATOR_KEY, AITBC_MINER_FAKE_ENGINE_ENABLED=true.
 */
export const GpuOverrideSchema = Type.Object(
  {
    /** CUDA index of the GPU this entry overrides or declares. Required. */
    index: Type.Integer({ minimum: 0 }),
    /** Name to report instead of the detected one (e.g. when the driver's is unhelpful). Default: detected. */
    name: Type.Optional(Type.String({ minLength: 1 })),
    /** VRAM to report, MiB. Default: detected. */
    vram_total_mb: Type.Optional(Type.Integer({ minimum: 0 })),
    /** Free VRAM to report, MiB. Default: detected, or vram_total_mb. */
    vram_free_mb: Type.Optional(Type.Integer({ minimum: 0 })),
  },
  { additionalProperties: false },
);

export const MinerConfigSchema = Type.Object(
  {
    coordinator: Type.Object(
      {
        /**
         * Coordinator address: ws(s)://host:port[/path] or http(s)://…; a bare host:port gets
         * "/v1/miners/connect". Several replicas: a list, or one string with commas (as the
         * environment gives it); the miner moves to the next when one fails. Default "ws://127.0.0.1:8080".
         */
        url: Type.Union([Type.String({ minLength: 1 }), Type.Array(Type.String({ minLength: 1 }), { minItems: 1, maxItems: 64 })], { default: "ws://127.0.0.1:8080" }),
        /** Miner key (sent as `Authorization: Bearer …`). Prefer key_file or AITBC_MINER_COORDINATOR_KEY. Default "" (unset). */
        key: Type.String({ default: "" }),
        /** File holding the miner key (first line), relative to the config file. Default "" (unset). */
        key_file: Type.String({ default: "" }),
        /** Time allowed for the WebSocket upgrade and the welcome. Default "10s". */
        connect_timeout: Duration("10s", "connect timeout"),
        /** First reconnect delay bound; grows ×2 with full jitter. Default "500ms". */
        reconnect_min: Duration("500ms", "first reconnect delay"),
        /** Largest reconnect delay. Default "30s". */
        reconnect_max: Duration("30s", "largest reconnect delay"),
      },
      { additionalProperties: false, default: {} },
    ),
    miner: Type.Object(
      {
        /** Name shown in the coordinator's status. Default "" = the host name. */
        name: Type.String({ default: "" }),
        /**
         * Jobs this miner runs at once, all GPUs together: on a CPU miner this many; on GPUs a cap
         * on the per-GPU figure × GPUs. 0 = chosen from the hardware (see default-concurrency.ts:
         * CPU cores and memory, or each GPU's VRAM, against the models' weights and KV cache per
         * sequence, at most [inference] max_batch per device). Default 0.
         */
        max_concurrent: Type.Integer({ minimum: 0, maximum: 4096, default: 0 }),
        /** Jobs one GPU runs at once; 0 = chosen from its VRAM (see max_concurrent). Default 0. */
        max_concurrent_per_gpu: Type.Integer({ minimum: 0, maximum: 256, default: 0 }),
        /** On SIGTERM: how long running jobs may take to finish before they are handed back. Default "30s". */
        drain_grace: Duration("30s", "drain grace period"),
        /** Least time between two progress frames of one job. Default "500ms". */
        progress_interval: Duration("500ms", "progress throttle"),
        /** Protocol 4: send the generated text as it comes (false: progress frames only; clients see the text at the end). Default true. */
        stream_text: Type.Boolean({ default: true }),
        /** Protocol 4: the generated text is sent at least this often while it grows (coalesced deltas). Default "50ms". */
        text_interval: Duration("50ms", "text stream interval"),
        /** Protocol 4: …or as soon as this many tokens are waiting, whichever comes first. Default 16. */
        text_max_tokens: Type.Integer({ minimum: 1, maximum: 4096, default: 16 }),
      },
      { additionalProperties: false, default: {} },
    ),
    gpus: Type.Object(
      {
        /** "auto": detect GPUs (nvidia-smi, systeminformation); "cpu": run as a CPU miner whatever is installed. Default "auto". */
        mode: Type.Union([Type.Literal("auto"), Type.Literal("cpu")], { default: "auto" }),
        /** CUDA indices to use; empty = every healthy GPU detected. Default []. */
        devices: Type.Array(Type.Integer({ minimum: 0 }), { default: [] }),
        /** nvidia-smi program (name on PATH or absolute path). Default "nvidia-smi". */
        nvidia_smi: Type.String({ minLength: 1, default: "nvidia-smi" }),
        /** Time allowed for nvidia-smi. Default "10s". */
        detect_timeout: Duration("10s", "nvidia-smi timeout"),
        /** Per-GPU overrides; an index detection did not find declares that GPU. Default []. */
        override: Type.Array(GpuOverrideSchema, { default: [] }),
      },
      { additionalProperties: false, default: {} },
    ),
    inference: InferenceConfigSchema,
    log: Type.Object(
      {
        /** fatal | error | warn | info | debug | trace | silent; reloaded on SIGHUP. Default "info". */
        level: Type.Union(
          ["fatal", "error", "warn", "info", "debug", "trace", "silent"].map((l) => Type.Literal(l)),
          { default: "info" },
        ),
        /** auto | json | pretty: "auto" is pretty on a terminal and JSON otherwise (env AITBC_MINER_LOG_FORMAT, flag --log-format). Default "auto". */
        format: Type.Union(
          LOG_FORMATS.map((f) => Type.Literal(f)),
          { default: "auto" },
        ),
      },
      { additionalProperties: false, default: {} },
    ),
    metrics: Type.Object(
      {
        /** host:port for GET /metrics (Prometheus), e.g. "127.0.0.1:9464"; "" = off. Default "". */
        listen: Type.String({ default: "" }),
      },
      { additionalProperties: false, default: {} },
    ),
    fake_engine: Type.Object(
      {
        /** Use the fake engine (fault-injection tests only): no model files, deterministic text. Default false. */
        enabled: Type.Boolean({ default: false }),
        /** Decode speed, tokens per second. Default 200. */
        tokens_per_second: Type.Number({ exclusiveMinimum: 0, default: 200 }),
        /** Models it claims to serve; empty = [inference] models. Default []. */
        models: Type.Array(Type.String({ minLength: 1 }), { default: [] }),
        /** Throw an engine error after this many tokens; 0 = never. Default 0. */
        fail_after_tokens: Type.Integer({ minimum: 0, default: 0 }),
        /** The engine "dies" after this many tokens: the job fails with engine_worker_failed and every later call fails too, as when onnxruntime's worker thread is gone; 0 = never. Default 0. */
        crash_after_tokens: Type.Integer({ minimum: 0, default: 0 }),
        /** Stop producing tokens after this many (abort still works); 0 = never. Default 0. */
        hang_after_tokens: Type.Integer({ minimum: 0, default: 0 }),
        /** Kill the whole process (exit code 70) after this many tokens; 0 = never. Default 0. */
        exit_after_tokens: Type.Integer({ minimum: 0, default: 0 }),
      },
      { additionalProperties: false, default: {} },
    ),
  },
  { additionalProperties: false },
);

export type MinerConfigRaw = Static<typeof MinerConfigSchema>;
export type GpuOverride = Static<typeof GpuOverrideSchema>;

export interface FakeEngineOptions {
  tokensPerSecond: number;
  models: string[];
  failAfterTokens: number;
  crashAfterTokens: number;
  hangAfterTokens: number;
  exitAfterTokens: number;
}

export interface MinerConfig {
  file: string | undefined;
  coordinator: {
    /** Full WebSocket URL of the gateway (the first of `urls`). */
    url: string;
    /** Every gateway URL, in the order the miner tries them. */
    urls: string[];
    key: string;
    connectTimeoutMs: number;
    reconnectMinMs: number;
    reconnectMaxMs: number;
  };
  miner: {
    name: string;
    /** 0 = chosen from the hardware (see defaultConcurrency). */
    maxConcurrent: number;
    /** 0 = chosen from each GPU's VRAM. */
    maxConcurrentPerGpu: number;
    drainGraceMs: number;
    progressIntervalMs: number;
    streamText: boolean;
    textIntervalMs: number;
    textMaxTokens: number;
  };
  gpus: {
    mode: "auto" | "cpu";
    devices: number[];
    nvidiaSmi: string;
    detectTimeoutMs: number;
    overrides: GpuOverride[];
  };
  inference: InferenceConfigRaw;
  /** host:port of the metrics listener; "" = off. */
  metricsListen: string;
  logLevel: LogLevel;
  logFormat: LogFormat;
  /** Set when the fake engine is enabled. */
  fakeEngine: FakeEngineOptions | undefined;
}

export const MINER_GATEWAY_PATH = "/v1/miners/connect";

/** ws(s) URL of the gateway from what an operator writes. */
export function gatewayUrl(raw: string): string {
  const withScheme = /^[a-z]+:\/\//i.test(raw) ? raw : `ws://${raw}`;
  const url = new URL(withScheme);
  if (url.protocol === "http:") url.protocol = "ws:";
  else if (url.protocol === "https:") url.protocol = "wss:";
  else if (url.protocol !== "ws:" && url.protocol !== "wss:") throw new Error(`unsupported scheme ${url.protocol}`);
  if (url.pathname === "" || url.pathname === "/") url.pathname = MINER_GATEWAY_PATH;
  return url.toString();
}

/** `url` as the file or the environment give it: one URL, a list, or URLs separated by commas. */
export function coordinatorUrls(raw: string | string[]): string[] {
  const all = (Array.isArray(raw) ? raw : [raw]).flatMap((u) => u.split(",")).map((u) => u.trim()).filter((u) => u !== "");
  if (all.length === 0) throw new Error("no coordinator URL");
  return [...new Set(all.map(gatewayUrl))];
}

/** Keys that contradict each other; `usable(keys…)` is false for keys invalid on their own. */
export function minerCrossChecks(raw: MinerConfigRaw, usable: (...keys: string[]) => boolean = () => true): ConfigProblem[] {
  const out: ConfigProblem[] = [];
  if (usable("coordinator.reconnect_min", "coordinator.reconnect_max")) {
    const min = parseDuration(raw.coordinator.reconnect_min);
    const max = parseDuration(raw.coordinator.reconnect_max);
    if (min > max) out.push({ key: "coordinator.reconnect_min", related: ["coordinator.reconnect_max"], message: `the first reconnect delay (${formatDuration(min)}) is longer than coordinator.reconnect_max (${formatDuration(max)})` });
  }
  return out;
}

export function compileMinerConfig(raw: MinerConfigRaw, file: string | undefined): MinerConfig {
  const problems = minerCrossChecks(raw);
  if (problems.length > 0) throw configError(file, problems);
  const dur = (key: string, v: string | number): number => compileField(file, key, () => parseDuration(v));
  let key = raw.coordinator.key.trim();
  if (key === "" && raw.coordinator.key_file !== "") {
    const keyPath = path.resolve(file === undefined ? "." : path.dirname(file), raw.coordinator.key_file);
    try {
      key = (readFileSync(keyPath, "utf8").split(/\r?\n/)[0] ?? "").trim();
    } catch (err) {
      throw new ConfigError(`${file ?? "config"}: coordinator.key_file: cannot read ${keyPath}: ${errorMessage(err)}`, {
        file,
        key: "coordinator.key_file",
      });
    }
  }
  const fake = raw.fake_engine;
  return {
    file,
    coordinator: {
      ...((): { url: string; urls: string[] } => {
        const urls = compileField(file, "coordinator.url", () => coordinatorUrls(raw.coordinator.url));
        return { url: urls[0]!, urls };
      })(),
      key,
      connectTimeoutMs: dur("coordinator.connect_timeout", raw.coordinator.connect_timeout),
      reconnectMinMs: dur("coordinator.reconnect_min", raw.coordinator.reconnect_min),
      reconnectMaxMs: dur("coordinator.reconnect_max", raw.coordinator.reconnect_max),
    },
    miner: {
      name: raw.miner.name.trim() === "" ? hostname() : raw.miner.name.trim(),
      maxConcurrent: raw.miner.max_concurrent,
      maxConcurrentPerGpu: raw.miner.max_concurrent_per_gpu,
      drainGraceMs: dur("miner.drain_grace", raw.miner.drain_grace),
      progressIntervalMs: dur("miner.progress_interval", raw.miner.progress_interval),
      streamText: raw.miner.stream_text,
      textIntervalMs: dur("miner.text_interval", raw.miner.text_interval),
      textMaxTokens: raw.miner.text_max_tokens,
    },
    gpus: {
      mode: raw.gpus.mode,
      devices: raw.gpus.devices,
      nvidiaSmi: raw.gpus.nvidia_smi,
      detectTimeoutMs: dur("gpus.detect_timeout", raw.gpus.detect_timeout),
      overrides: raw.gpus.override,
    },
    inference: raw.inference,
    metricsListen: raw.metrics.listen,
    logLevel: raw.log.level as LogLevel,
    logFormat: raw.log.format,
    fakeEngine: fake.enabled
      ? {
          tokensPerSecond: fake.tokens_per_second,
          models: fake.models.length > 0 ? fake.models : raw.inference.models,
          failAfterTokens: fake.fail_after_tokens,
          crashAfterTokens: fake.crash_after_tokens,
          hangAfterTokens: fake.hang_after_tokens,
          exitAfterTokens: fake.exit_after_tokens,
        }
      : undefined,
  };
}

/** Loads and compiles the miner config: defaults < file < AITBC_MINER_* env < flags. */
export function loadMinerConfig(
  options: Omit<LoadConfigOptions, "envPrefix"> & { requireKey?: boolean },
): MinerConfig {
  const loaded = loadConfig(MinerConfigSchema, { ...options, envPrefix: "MINER", crossChecks: minerCrossChecks });
  const config = compileMinerConfig(loaded.config, loaded.file);
  if (options.requireKey && config.coordinator.key === "") {
    throw new ConfigError(
      `${loaded.file ?? "config"}: coordinator.key: a miner key is required (key, key_file or AITBC_MINER_COORDINATOR_KEY)`,
      { file: loaded.file, key: "coordinator.key" },
    );
  }
  return config;
}

/**
 * Total concurrent jobs from explicit settings: the per-GPU limit × GPUs, capped by
 * max_concurrent when it is set; on a CPU miner max_concurrent, else 1. Settings left at 0
 * are chosen from the hardware by defaultConcurrency (default-concurrency.ts), which calls this.
 */
export function computeSlots(config: Pick<MinerConfig["miner"], "maxConcurrent" | "maxConcurrentPerGpu">, gpuCount: number): number {
  const perGpu = gpuCount > 0 ? gpuCount * Math.max(1, config.maxConcurrentPerGpu) : 1;
  return config.maxConcurrent > 0 ? (gpuCount > 0 ? Math.min(config.maxConcurrent, perGpu) : config.maxConcurrent) : perGpu;
}
