import * as ort from "onnxruntime-node";
import { ModelError } from "../common/errors.js";
import { KV_PARTS, kvName, kvNames, LOGITS, NEW_KEY_VALUES, PAST, PRESENT, type KvPrefix } from "./models/model-io.js";

/** What a cache needs to know of its model. */
export interface CacheModel {
  name: string;
  nLayer: number;
  nHead: number;
  headDim: number;
}

/**
 * Where a row's cached entries are: row `index` of a cache `past` with `capacity` slots per
 * row and head, right-aligned to end at slot `length`.
 */
export interface CacheSource {
  past: Record<string, ort.Tensor>;
  length: number;
  capacity: number;
  index: number;
}

/**
 * A batch's KV cache, [B, H, C, D] per layer, with each row's entries right-aligned to end at
 * slot P (a row with fewer cached tokens has padding on its left, which its attention_mask
 * masks out). Slots P..C-1, when C > P, are empty and masked out too. A decode step attends
 * over the C slots and then the new token (at C in the mask). Two strategies fill it:
 * `PresentCache` takes each step's `present` outputs (optimum's layout), `KeptCache` keeps the
 * cache itself and fetches only the step's new entries (our graphs). `createKvCache` picks.
 */
export abstract class KvCache {
  /** past_key_values.{i}.key|value, what a step feeds. */
  past: Record<string, ort.Tensor>;
  /** P: slots in use (each row's entries end here). */
  length = 0;
  /** C: slots per row and head. */
  capacity = 0;
  /** What a step fetches from the graph, with logits (undefined: every output). */
  abstract readonly stepFetches: string[] | undefined;
  /** The outputs that carry a step's entries when fetching `stepFetches`. */
  abstract readonly stepPrefix: KvPrefix;

  constructor(
    protected readonly model: CacheModel,
    /** Empty slots a rebuilt cache gets beyond the longest row. */
    private readonly growth: number,
  ) {
    this.past = emptyPast(model, 0);
  }

  /** Before a decode step: makes sure the step's entries have somewhere to go. */
  abstract reserve(cached: readonly number[]): void;

  /** After a decode step: takes its outputs (fetched with `stepFetches`) into the cache. */
  abstract absorb(outputs: ort.InferenceSession.OnnxValueMapType): void;

  /** Sources for the rows at these indices of the cache as it is now. */
  sources(indices: number[]): CacheSource[] {
    return indices.map((index) => ({ past: this.past, length: this.length, capacity: this.capacity, index }));
  }

  /** An empty cache (no rows). */
  reset(): void {
    this.set(emptyPast(this.model, 0), 0, 0);
  }

  /**
   * Lays the cache out for rows with `cached[i]` entries each, as long as the longest of them
   * plus the strategy's growth: row i's entries copied right-aligned from `sources[i]`.
   */
  rebuild(cached: readonly number[], sources: CacheSource[]): void {
    const length = cached.reduce((m, c) => Math.max(m, c), 0);
    const capacity = length + this.growth;
    const { nHead: h, headDim: d } = this.model;
    const next = emptyPast(this.model, cached.length, capacity);
    cached.forEach((count, r) => {
      const src = sources[r] as CacheSource;
      for (const name of Object.keys(next)) {
        const to = (next[name] as ort.Tensor).data as Float32Array;
        const from = (src.past[name] as ort.Tensor).data as Float32Array;
        for (let head = 0; head < h; head++) {
          const fromEnd = ((src.index * h + head) * src.capacity + src.length) * d;
          const toEnd = ((r * h + head) * capacity + length) * d;
          to.set(from.subarray(fromEnd - count * d, fromEnd), toEnd - count * d);
        }
      }
    });
    this.set(next, length, capacity);
  }

  protected set(past: Record<string, ort.Tensor>, length: number, capacity: number): void {
    this.past = past;
    this.length = length;
    this.capacity = capacity;
  }
}

/**
 * The cache of a graph in optimum's layout: each step's `present` outputs, [B,H,P+1,D], become
 * the next step's past (C = P). onnxruntime-node copies every fetched output into a new JS
 * buffer, so this moves the whole cache out of the graph every step.
 */
export class PresentCache extends KvCache {
  readonly stepFetches = undefined;
  readonly stepPrefix = PRESENT;

  constructor(model: CacheModel) {
    super(model, 0);
  }

  reserve(): void {}

  absorb(outputs: ort.InferenceSession.OnnxValueMapType): void {
    const total = this.capacity + 1;
    this.set(pastFrom(this.model, outputs, PRESENT), total, total);
  }

  /** A lone row whose source is already exactly its cache (a solo job after its prefill) keeps it uncopied. */
  override rebuild(cached: readonly number[], sources: CacheSource[]): void {
    const only = sources[0];
    const length = cached[0] ?? 0;
    if (cached.length === 1 && only?.length === length && only.capacity === length && (only.past[kvName(PAST, 0, "key")]?.dims[0] ?? 0) === 1) {
      this.set(only.past, length, length);
      return;
    }
    super.rebuild(cached, sources);
  }
}

/**
 * Empty slots a kept cache gains when it is full: each costs a little masked attention per
 * step, each growth one copy of the cache.
 */
export const CACHE_GROWTH = 64;

/**
 * The cache of a graph that also outputs `new_key_values` (our builds): kept here with room to
 * grow ([B,H,C,D], C ≥ P), a step fetches only its new entries and writes them into slot P,
 * moving one position out of the graph instead of all of them (gpt2-124m int8 at 800 cached
 * tokens: 38 → 14 ms per step). Attention does not depend on the order of its keys, so the
 * new token's key, last in the graph's concatenation, and its slot P give the same result.
 */
export class KeptCache extends KvCache {
  readonly stepFetches: string[];
  readonly stepPrefix = NEW_KEY_VALUES;

  constructor(model: CacheModel) {
    super(model, CACHE_GROWTH);
    this.stepFetches = [LOGITS, ...kvNames(NEW_KEY_VALUES, model.nLayer)];
  }

  reserve(cached: readonly number[]): void {
    if (this.length === this.capacity) this.rebuild(cached, this.sources(cached.map((_, index) => index)));
  }

  /** Writes the step's new entries ([B,H,1,D] per layer) into slot P. */
  absorb(outputs: ort.InferenceSession.OnnxValueMapType): void {
    const entries = pastFrom(this.model, outputs, NEW_KEY_VALUES);
    const d = this.model.headDim;
    for (const [name, tensor] of Object.entries(this.past)) {
      const to = tensor.data as Float32Array;
      const from = (entries[name] as ort.Tensor).data as Float32Array;
      const rowsAndHeads = from.length / d;
      for (let i = 0; i < rowsAndHeads; i++) to.set(from.subarray(i * d, (i + 1) * d), (i * this.capacity + this.length) * d);
    }
    this.length += 1;
  }
}

/** The strategy a model's graph allows: a kept cache when it outputs new_key_values. */
export function createKvCache(model: CacheModel & { newKeyValues?: boolean }): KvCache {
  return model.newKeyValues === true ? new KeptCache(model) : new PresentCache(model);
}

/** Zero-filled past tensors [batch, H, length, D] (length 0: the empty past of a first step). */
export function emptyPast(model: CacheModel, batch: number, length = 0): Record<string, ort.Tensor> {
  const past: Record<string, ort.Tensor> = {};
  const dims = [batch, model.nHead, length, model.headDim];
  const size = batch * model.nHead * length * model.headDim;
  for (const name of kvNames(PAST, model.nLayer)) past[name] = new ort.Tensor("float32", new Float32Array(size), dims);
  return past;
}

/** The `<prefix>.{i}.key|value` outputs (present or new_key_values) under their past_key_values names. */
export function pastFrom(model: CacheModel, outputs: ort.InferenceSession.OnnxValueMapType, prefix: KvPrefix): Record<string, ort.Tensor> {
  const past: Record<string, ort.Tensor> = {};
  for (let i = 0; i < model.nLayer; i++) {
    for (const part of KV_PARTS) {
      const tensor = outputs[kvName(prefix, i, part)];
      if (tensor === undefined) throw new ModelError("model_io_mismatch", `the model returned no ${prefix} key/value`, { model: model.name, layer: i });
      past[kvName(PAST, i, part)] = tensor;
    }
  }
  return past;
}
