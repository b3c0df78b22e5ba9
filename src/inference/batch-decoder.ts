import * as ort from "onnxruntime-node";
import { ModelError } from "../common/errors.js";
import { Prng } from "../common/prng.js";
import { NEW_KEY_VALUES } from "./models/gpt2-graph.js";
import type { SamplingParams } from "./sampling.js";
import { sampleNextToken } from "./sampling.js";

/** A model's session and the shape its feeds need. */
export interface DecodeModel {
  name: string;
  session: ort.InferenceSession;
  nLayer: number;
  nHead: number;
  headDim: number;
  vocabSize: number;
  eosTokenId: number;
  /** The graph's logits are [B,1,V], for the last position only: a prompt is then prefilled in one run. */
  lastLogitsOnly?: boolean;
  /** The graph also outputs `new_key_values` (our builds): the decoder keeps its own cache and fetches only those. */
  newKeyValues?: boolean;
}

export interface DecodeRequest extends SamplingParams {
  promptIds: number[];
  /** Already clamped to the context by the caller. */
  maxTokens: number;
  seed: number;
}

export interface DecodeHooks {
  /** True once the caller wants no more tokens (abort, or a stop sequence seen); read before every step. */
  cancelled: () => boolean;
  onToken: (tokenId: number, count: number) => void;
}

export interface DecodeResult {
  tokenIds: number[];
  finishReason: "length" | "eos" | "cancelled";
  /** Seconds between the first and the last generated token (0 for one token). */
  decodeSeconds: number;
}

/** One sequence's part in a batch. */
interface Row {
  req: DecodeRequest;
  hooks: DecodeHooks;
  done: (result: DecodeResult) => void;
  fail: (err: unknown) => void;
  random: Prng;
  /** Prompt and generated ids: what the repetition penalty looks at. */
  seen: number[];
  generated: number[];
  /** Tokens in this row's KV cache (prompt plus generated, less the last token, which is fed next). */
  cached: number;
  firstTokenAt: number;
  lastTokenAt: number;
  finish?: DecodeResult["finishReason"];
}

/**
 * Where a row's cached entries are: row `index` of a cache `past` with `capacity` slots per
 * row and head, right-aligned to end at slot `length`.
 */
interface CacheSource {
  past: Record<string, ort.Tensor>;
  length: number;
  capacity: number;
  index: number;
}

/** Prompts longer than this are prefilled in two runs on graphs with logits for every position (see prefill). */
const PREFILL_SPLIT_TOKENS = 16;

/**
 * Empty slots a kept cache gains when it is full: each costs a little masked attention per
 * step, each growth one copy of the cache.
 */
export const CACHE_GROWTH = 64;

/**
 * Continuous batching for one model on one device. Sequences join and leave between decode
 * steps; each step feeds every active sequence's last token in one session.run, so the
 * weights are read once for all of them (decoding is bound by reading the weights: a batch of
 * 8 costs little more than one). A joining sequence is prefilled alone (batch 1), then its KV
 * cache is merged into the batch's.
 *
 * The batch's cache is [B, H, P, D] with each row's entries right-aligned: a row with fewer
 * cached tokens than P has padding on the left, masked out by its attention_mask row, and
 * position_ids carry each row's own positions. Masked scores are replaced by a large negative
 * before the softmax, so a padded row computes what it would alone (up to float rounding in
 * the matmuls: batched and solo runs agree token for token on our test models). When rows
 * leave, the cache is compacted and P trimmed to the longest remaining row. Each row samples
 * from its own seeded PRNG, one draw per token, as it would alone.
 *
 * Cancellation is checked for every row before every step: a cancelled row leaves within one
 * step with the tokens it has.
 *
 * The cache of a step comes one of two ways. From a graph in optimum's layout, it is the
 * `present` outputs of the last step, [B,H,P+1,D]: onnxruntime-node copies every fetched
 * output into a new JS buffer, the whole cache every step. From our graphs, which also output
 * `new_key_values` (the step's own keys and values), the decoder keeps the cache itself, with
 * room to grow ([B,H,C,D], C ≥ P, slots P..C-1 empty and masked out), and fetches only the new
 * entries, which it writes into slot P: a step then moves one position out of the graph
 * instead of all of them (gpt2-124m int8 at 800 cached tokens: 38 → 14 ms per step).
 * Attention does not depend on the order of its keys, so the new token's key, last in the
 * graph's concatenation, and its slot P in the kept cache give the same result.
 */
export class BatchDecoder {
  private readonly waiting: Row[] = [];
  private rows: Row[] = [];
  private past: Record<string, ort.Tensor>;
  /** P: slots of the batch's cache in use (each row's entries end at P). */
  private pastLength = 0;
  /** C: slots of the batch's cache (C = P with `present` outputs; C ≥ P for a kept cache). */
  private capacity = 0;
  private readonly inputNames: Set<string>;
  /** What a step fetches from a graph with new_key_values: logits and those (undefined: every output). */
  private readonly fetches: string[] | undefined;

  /** Most sequences in one decode step; the rest wait for a row to leave. */
  readonly maxBatch: number;

  constructor(
    readonly model: DecodeModel,
    maxBatch: number,
  ) {
    if (!Number.isInteger(maxBatch) || maxBatch < 1) throw new Error("maxBatch must be a positive integer");
    this.inputNames = new Set(model.session.inputNames);
    // A graph without position_ids numbers the new token after the whole (padded) cache, which
    // is wrong for a row with left padding: such a model runs one sequence at a time.
    this.maxBatch = this.inputNames.has("position_ids") ? maxBatch : 1;
    this.past = emptyPast(model, 0);
    this.fetches = model.newKeyValues === true ? ["logits", ...kvNames(model, NEW_KEY_VALUES)] : undefined;
  }

  /** Queues a sequence; it joins the batch at the next step with room. Resolves when it ends. */
  add(req: DecodeRequest, hooks: DecodeHooks): Promise<DecodeResult> {
    return new Promise((done, fail) => {
      this.waiting.push({ req, hooks, done, fail, random: new Prng(req.seed), seen: [...req.promptIds], generated: [], cached: 0, firstTokenAt: 0, lastTokenAt: 0 });
    });
  }

  /** Sequences in the batch or waiting for it. */
  get size(): number {
    return this.rows.length + this.waiting.length;
  }

  /** Sequences in the batch now (for tests and logs). */
  get active(): number {
    return this.rows.length;
  }

  /**
   * One round: drops cancelled rows, admits waiting sequences while there is room (each
   * prefilled, giving its first token), then runs one decode step for every row. A failing
   * run fails the rows it was for; the decoder stays usable for the others.
   */
  async step(): Promise<void> {
    try {
      for (const row of this.rows) if (row.hooks.cancelled()) row.finish = "cancelled";
      this.retire();
      while (this.waiting.length > 0 && this.rows.length < this.maxBatch) {
        const row = this.waiting.shift() as Row;
        try {
          await this.admit(row);
        } catch (err) {
          row.fail(err);
        }
      }
      this.retire();
      if (this.rows.length > 0) await this.decodeStep();
      this.retire();
    } catch (err) {
      // A failed batched run (or anything else here) ends every row in the batch; waiting ones stay.
      for (const row of this.rows) row.fail(err);
      this.rows = [];
      this.setCache(emptyPast(this.model, 0), 0, 0);
    }
  }

  /** Prefills a row alone and, unless it is already finished, merges its cache into the batch's. */
  private async admit(row: Row): Promise<void> {
    if (row.hooks.cancelled() || row.req.maxTokens <= 0) {
      row.finish = row.hooks.cancelled() ? "cancelled" : "length";
      this.end(row);
      return;
    }
    const { logits, past, pastLength } = await this.prefill(row.req.promptIds);
    this.take(row, logits);
    if (row.finish !== undefined) {
      this.end(row);
      return;
    }
    row.cached = pastLength;
    const sources = this.currentSources();
    this.rows.push(row);
    sources.push({ past, length: pastLength, capacity: pastLength, index: 0 });
    this.rebuildCache(sources);
  }

  /**
   * Runs the prompt with an empty past and returns the logits of its last position and the
   * cache. Our own graphs compute logits for the last position only, so the prompt is one
   * run. A graph in optimum's layout computes them for every position, [S, vocab] floats that
   * onnxruntime-node copies into a new JS buffer when fetched, so there a long prompt runs all
   * but its last token asking only for the KV outputs, and the last token on its own: prefill
   * of 1000 tokens on tiny-gpt2 drops from ~800 ms to ~50 ms, for one more read of the weights.
   * (onnxruntime still computes the unfetched logits: it runs every node whatever is fetched.)
   */
  private async prefill(promptIds: number[]): Promise<{ logits: Float32Array; past: Record<string, ort.Tensor>; pastLength: number }> {
    let past = emptyPast(this.model, 1);
    let pastLength = 0;
    let ids = promptIds;
    if (this.model.lastLogitsOnly !== true && ids.length > PREFILL_SPLIT_TOKENS) {
      const head = ids.slice(0, -1);
      past = pastFrom(this.model, await this.model.session.run(buildFeeds(this.inputNames, head, 0, past), kvNames(this.model, "present")), "present");
      pastLength = head.length;
      ids = ids.slice(-1);
    }
    const feeds = buildFeeds(this.inputNames, ids, pastLength, past);
    // With an empty past the new keys and values are the whole cache; after a split they are the last token's only.
    const fetches = pastLength === 0 ? this.fetches : undefined;
    const outputs = await this.run(feeds, fetches);
    const all = logitsOf(this.model, outputs);
    const next = pastFrom(this.model, outputs, fetches === undefined ? "present" : NEW_KEY_VALUES);
    return { logits: all.subarray(all.length - this.model.vocabSize), past: next, pastLength: pastLength + ids.length };
  }

  /** One decode step for every row: each row's last token in, one token per row out. */
  private async decodeStep(): Promise<void> {
    // A kept cache needs an empty slot for this step's entries.
    if (this.keepsCache && this.pastLength === this.capacity) this.rebuildCache(this.currentSources());
    const rows = this.rows;
    const b = rows.length;
    const p = this.pastLength;
    // The graph attends over the C cache slots and then the new token: row r's own entries end at P, the token is at C.
    const total = this.capacity + 1;
    const inputIds = new BigInt64Array(b);
    const mask = new BigInt64Array(b * total);
    const positions = new BigInt64Array(b);
    rows.forEach((row, r) => {
      inputIds[r] = BigInt(row.generated[row.generated.length - 1] as number);
      mask.fill(1n, r * total + (p - row.cached), r * total + p);
      mask[r * total + this.capacity] = 1n;
      positions[r] = BigInt(row.cached);
    });
    const feeds: Record<string, ort.Tensor> = {
      input_ids: new ort.Tensor("int64", inputIds, [b, 1]),
      attention_mask: new ort.Tensor("int64", mask, [b, total]),
    };
    if (this.inputNames.has("position_ids")) feeds.position_ids = new ort.Tensor("int64", positions, [b, 1]);
    if (this.inputNames.has("use_cache_branch")) feeds.use_cache_branch = new ort.Tensor("bool", new Uint8Array([1]), [1]);
    for (const [name, tensor] of Object.entries(this.past)) if (this.inputNames.has(name)) feeds[name] = tensor;

    const outputs = await this.run(feeds, this.fetches);
    const logits = logitsOf(this.model, outputs);
    if (this.keepsCache) this.appendToCache(pastFrom(this.model, outputs, NEW_KEY_VALUES));
    else this.setCache(pastFrom(this.model, outputs, "present"), total, total);
    const v = this.model.vocabSize;
    rows.forEach((row, r) => {
      row.cached += 1;
      this.take(row, logits.subarray(r * v, (r + 1) * v));
    });
  }

  /** Samples a row's next token from its logits (copied: sampling edits in place) and reports it. */
  private take(row: Row, logits: Float32Array): void {
    const id = sampleNextToken(logits.slice(), row.seen, row.req, row.random);
    row.lastTokenAt = performance.now();
    if (row.generated.length === 0) row.firstTokenAt = row.lastTokenAt;
    row.generated.push(id);
    row.seen.push(id);
    row.hooks.onToken(id, row.generated.length);
    if (id === this.model.eosTokenId) row.finish = "eos";
    else if (row.generated.length >= row.req.maxTokens) row.finish = "length";
  }

  /** Ends the finished rows and compacts the cache to the rows that remain. */
  private retire(): void {
    const finished = this.rows.filter((r) => r.finish !== undefined);
    if (finished.length === 0) return;
    const sources = this.currentSources(this.rows.flatMap((r, index) => (r.finish === undefined ? [index] : [])));
    this.rows = this.rows.filter((r) => r.finish === undefined);
    this.rebuildCache(sources);
    for (const row of finished) this.end(row);
  }

  /** Whether the decoder keeps the cache itself (the graph has new_key_values). */
  private get keepsCache(): boolean {
    return this.fetches !== undefined;
  }

  /** session.run fetching `fetches`, or every output. */
  private run(feeds: Record<string, ort.Tensor>, fetches: string[] | undefined): Promise<ort.InferenceSession.OnnxValueMapType> {
    return fetches === undefined ? this.model.session.run(feeds) : this.model.session.run(feeds, fetches);
  }

  /** Sources for the rows at these indices (default: every row) of the batch cache as it is now. */
  private currentSources(indices: number[] = this.rows.map((_, index) => index)): CacheSource[] {
    return indices.map((index) => ({ past: this.past, length: this.pastLength, capacity: this.capacity, index }));
  }

  private setCache(past: Record<string, ort.Tensor>, length: number, capacity: number): void {
    this.past = past;
    this.pastLength = length;
    this.capacity = capacity;
  }

  /**
   * Makes the batch cache for the current rows, as long as the longest of them (plus room to
   * grow when the decoder keeps it): each row's cached entries copied right-aligned from
   * `sources[i]`, where row i's are now. With `present` outputs, a lone row whose source is
   * already exactly its cache (a solo job after its prefill) keeps it uncopied.
   */
  private rebuildCache(sources: CacheSource[]): void {
    const rows = this.rows;
    const length = rows.reduce((m, r) => Math.max(m, r.cached), 0);
    const only = sources[0];
    if (!this.keepsCache && rows.length === 1 && only?.length === length && only.capacity === length && (only.past["past_key_values.0.key"]?.dims[0] ?? 0) === 1) {
      this.setCache(only.past, length, length);
      return;
    }
    const capacity = this.keepsCache ? length + CACHE_GROWTH : length;
    const { nHead: h, headDim: d } = this.model;
    const next = emptyPast(this.model, rows.length, capacity);
    rows.forEach((row, r) => {
      const src = sources[r] as CacheSource;
      for (const name of Object.keys(next)) {
        const to = (next[name] as ort.Tensor).data as Float32Array;
        const from = (src.past[name] as ort.Tensor).data as Float32Array;
        for (let head = 0; head < h; head++) {
          const fromEnd = ((src.index * h + head) * src.capacity + src.length) * d;
          const toEnd = ((r * h + head) * capacity + length) * d;
          to.set(from.subarray(fromEnd - row.cached * d, fromEnd), toEnd - row.cached * d);
        }
      }
    });
    this.setCache(next, length, capacity);
  }

  /** Writes one step's new entries ([B,H,1,D] per layer) into slot P of the kept cache. */
  private appendToCache(entries: Record<string, ort.Tensor>): void {
    const { nHead: h, headDim: d } = this.model;
    const rowsAndHeads = this.rows.length * h;
    for (const [name, tensor] of Object.entries(this.past)) {
      const to = tensor.data as Float32Array;
      const from = (entries[name] as ort.Tensor).data as Float32Array;
      for (let i = 0; i < rowsAndHeads; i++) to.set(from.subarray(i * d, (i + 1) * d), (i * this.capacity + this.pastLength) * d);
    }
    this.pastLength += 1;
  }

  private end(row: Row): void {
    row.done({ tokenIds: row.generated, finishReason: row.finish ?? "length", decodeSeconds: (row.lastTokenAt - row.firstTokenAt) / 1000 });
  }
}

/**
 * Prefill, then one token per step with the KV cache, for one sequence: a batch of one.
 * Token ids in, token ids out (text is the main thread's business). The end-of-text token is
 * kept in `tokenIds` and ends the loop.
 */
export async function runDecode(model: DecodeModel, req: DecodeRequest, hooks: DecodeHooks): Promise<DecodeResult> {
  const decoder = new BatchDecoder(model, 1);
  const result = decoder.add(req, hooks);
  while (decoder.size > 0) await decoder.step();
  return result;
}

/** `<prefix>.{i}.key|value` for every layer: "present" or new_key_values. */
function kvNames(model: DecodeModel, prefix: string): string[] {
  const names: string[] = [];
  for (let i = 0; i < model.nLayer; i++) names.push(`${prefix}.${i}.key`, `${prefix}.${i}.value`);
  return names;
}

/** Zero-filled past tensors [batch, H, length, D] (length 0: the empty past of a first step). */
function emptyPast(model: DecodeModel, batch: number, length = 0): Record<string, ort.Tensor> {
  const past: Record<string, ort.Tensor> = {};
  const dims = [batch, model.nHead, length, model.headDim];
  const size = batch * model.nHead * length * model.headDim;
  for (let i = 0; i < model.nLayer; i++) {
    past[`past_key_values.${i}.key`] = new ort.Tensor("float32", new Float32Array(size), dims);
    past[`past_key_values.${i}.value`] = new ort.Tensor("float32", new Float32Array(size), dims);
  }
  return past;
}

/** The `<prefix>.{i}.key|value` outputs ("present" or new_key_values) under their past_key_values names. */
function pastFrom(model: DecodeModel, outputs: ort.InferenceSession.OnnxValueMapType, prefix: string): Record<string, ort.Tensor> {
  const past: Record<string, ort.Tensor> = {};
  for (let i = 0; i < model.nLayer; i++) {
    for (const part of ["key", "value"]) {
      const tensor = outputs[`${prefix}.${i}.${part}`];
      if (tensor === undefined) throw new ModelError("model_io_mismatch", `the model returned no ${prefix} key/value`, { model: model.name, layer: i });
      past[`past_key_values.${i}.${part}`] = tensor;
    }
  }
  return past;
}

function logitsOf(model: DecodeModel, outputs: ort.InferenceSession.OnnxValueMapType): Float32Array {
  const logits = outputs.logits;
  if (logits === undefined) throw new ModelError("model_io_mismatch", "the model returned no logits", { model: model.name });
  return logits.data as Float32Array;
}

/** Feeds for one sequence's step, only those the graph declares (position_ids and use_cache_branch are optional). */
export function buildFeeds(inputNames: Set<string>, stepIds: number[], pastLength: number, past: Record<string, ort.Tensor>): Record<string, ort.Tensor> {
  const n = stepIds.length;
  const feeds: Record<string, ort.Tensor> = {
    input_ids: new ort.Tensor("int64", BigInt64Array.from(stepIds, (v) => BigInt(v)), [1, n]),
    attention_mask: new ort.Tensor("int64", new BigInt64Array(pastLength + n).fill(1n), [1, pastLength + n]),
  };
  if (inputNames.has("position_ids")) {
    const pos = new BigInt64Array(n);
    for (let i = 0; i < n; i++) pos[i] = BigInt(pastLength + i);
    feeds.position_ids = new ort.Tensor("int64", pos, [1, n]);
  }
  if (inputNames.has("use_cache_branch")) feeds.use_cache_branch = new ort.Tensor("bool", new Uint8Array([pastLength > 0 ? 1 : 0]), [1]);
  for (const [name, tensor] of Object.entries(past)) if (inputNames.has(name)) feeds[name] = tensor;
  return feeds;
}
