import { Type, type Static } from "@sinclair/typebox";

/**
 * `[inference]` section of config/miner.toml (raw form, as written in the file).
 * The engine compiles it with {@link compileInferenceConfig}.
 */
export const InferenceConfigSchema = Type.Object(
  {
    /** "auto" tries CUDA on each chosen GPU and falls back to CPU, logging why; "cuda" refuses to start without it. Default "auto". */
    execution_provider: Type.Union([Type.Literal("auto"), Type.Literal("cuda"), Type.Literal("cpu")], { default: "auto" }),
    /** Directory holding model folders (`<models_dir>/<name>/config.json …`). Default "models" (relative to the working directory). */
    models_dir: Type.String({ default: "models" }),
    /** Model folder names to load at start. Default ["tiny-gpt2"]. */
    models: Type.Array(Type.String({ minLength: 1 }), { default: ["tiny-gpt2"] }),
    /** Threads inside one operator (onnxruntime intraOpNumThreads); 0 = one per CPU the process may use. Default 0. */
    intra_op_threads: Type.Integer({ minimum: 0, maximum: 256, default: 0 }),
    /** Threads across operators (interOpNumThreads); 0 = onnxruntime's choice. Default 0. */
    inter_op_threads: Type.Integer({ minimum: 0, maximum: 256, default: 0 }),
    /**
     * Let onnxruntime's intra-op threads spin while waiting for work (intra_op.allow_spinning).
     * Fastest on a host the miner has to itself; with other busy processes on the CPUs spinning
     * threads collapse throughput (measured 79 → 12 tokens/s on 2 shared vCPUs, and 13.0 → 4.9
     * tokens/s for gpt2-124m at load average 15). "auto" measures, when the engine starts, the CPU
     * time other processes use over 0.3 s and spins only if it is under half a CPU. Default "auto".
     */
    thread_spinning: Type.Union([Type.Boolean(), Type.Literal("auto")], { default: "auto" }),
    /**
     * Most generations of one model that share a decode step on one device (continuous
     * batching: a step reads the weights once for all of them, so 8 at once cost little more
     * than one). The miner runs as many jobs at once as its slots (`[miner] max_concurrent`,
     * `max_concurrent_per_gpu`, or when both are 0 the figure src/miner/default-concurrency.ts
     * chooses, at most max_batch per device); those beyond max_batch wait for a place. A model whose graph has no position_ids
     * input runs one at a time. 1 = one generation at a time. Default 8.
     */
    max_batch: Type.Integer({ minimum: 1, maximum: 256, default: 8 }),
    /** onnxruntime graph optimisation level. Default "all". */
    graph_optimization_level: Type.Union(
      [Type.Literal("disabled"), Type.Literal("basic"), Type.Literal("extended"), Type.Literal("all")],
      { default: "all" },
    ),
  },
  { additionalProperties: false, default: {} },
);

export type InferenceConfigRaw = Static<typeof InferenceConfigSchema>;

export interface InferenceConfig {
  executionProvider: "auto" | "cuda" | "cpu";
  /** GPU device ids to run on (from the miner's GPU selection); empty on a CPU host. */
  deviceIds: number[];
  modelsDir: string;
  models: string[];
  intraOpThreads: number;
  interOpThreads: number;
  graphOptimizationLevel: "disabled" | "basic" | "extended" | "all";
  /** Default "auto" (see `thread_spinning`). */
  threadSpinning?: boolean | "auto";
  /** Default 8 (see `max_batch`). */
  maxBatch?: number;
}

export function compileInferenceConfig(raw: InferenceConfigRaw, deviceIds: number[]): InferenceConfig {
  return {
    executionProvider: raw.execution_provider,
    deviceIds,
    modelsDir: raw.models_dir,
    models: raw.models,
    intraOpThreads: raw.intra_op_threads,
    interOpThreads: raw.inter_op_threads,
    graphOptimizationLevel: raw.graph_optimization_level,
    threadSpinning: raw.thread_spinning,
    maxBatch: raw.max_batch,
  };
}
