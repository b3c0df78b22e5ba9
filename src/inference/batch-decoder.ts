import * as ort from "onnxruntime-node";
import { ModelError } from "../common/errors.js";
import { Prng } from "../common/prng.js";
import { createKvCache, emptyPast, pastFrom, type CacheModel, type KvCache } from "./kv-cache.js";
import { ATTENTION_MASK, INPUT_IDS, kvNames, LOGITS, POSITION_IDS, PRESENT, USE_CACHE_BRANCH } from "./models/model-io.js";
import type { SamplingParams } from "./sampling.js";
import { sampleNextToken } from "./sampling.js";

/** A model's session and the shape its feeds need (its cache's shape is the KV cache's). */
export interface DecodeModel extends CacheModel {
  session: ort.InferenceSession;
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

/** Prompts longer than this are prefilled in two runs on graphs with logits for every position (see prefill). */
const PREFILL_SPLIT_TOKENS = 16;

/**
 * Continuous batching for one model on one device. Sequences join and leave between decode
 * steps; each step feeds every active sequence's last token in one session.run, so the
 * weights are read once for all of them (decoding is bound by reading the weights: a batch of
 * 8 costs little more than one). A joining sequence is prefilled alone (batch 1), then its KV
 * cache is merged into the batch's.
 *
 * The batch's cache is [B, H, C, D] with each row's entries right-aligned: a row with fewer
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
 * The cache is a `KvCache` (kv-cache.ts): the `present` outputs of each step for a graph in
 * optimum's layout, a cache kept here for our graphs, which also output the step's new entries.
 */
export class BatchDecoder {
  private readonly waiting: Row[] = [];
  private rows: Row[] = [];
  private readonly cache: KvCache;
  private readonly inputNames: Set<string>;

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
    this.maxBatch = this.inputNames.has(POSITION_IDS) ? maxBatch : 1;
    this.cache = createKvCache(model);
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
      this.cache.reset();
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
    const sources = this.cache.sources(this.rows.map((_, index) => index));
    this.rows.push(row);
    sources.push({ past, length: pastLength, capacity: pastLength, index: 0 });
    this.cache.rebuild(this.cachedCounts(), sources);
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
      past = pastFrom(this.model, await this.model.session.run(buildFeeds(this.inputNames, head, 0, past), kvNames(PRESENT, this.model.nLayer)), PRESENT);
      pastLength = head.length;
      ids = ids.slice(-1);
    }
    const feeds = buildFeeds(this.inputNames, ids, pastLength, past);
    // With an empty past a step's own entries are the whole cache; after a split they are the last token's only.
    const fetches = pastLength === 0 ? this.cache.stepFetches : undefined;
    const outputs = await this.run(feeds, fetches);
    const all = logitsOf(this.model, outputs);
    const next = pastFrom(this.model, outputs, pastLength === 0 ? this.cache.stepPrefix : PRESENT);
    return { logits: all.subarray(all.length - this.model.vocabSize), past: next, pastLength: pastLength + ids.length };
  }

  /** One decode step for every row: each row's last token in, one token per row out. */
  private async decodeStep(): Promise<void> {
    const rows = this.rows;
    this.cache.reserve(this.cachedCounts());
    const { length: p, capacity } = this.cache;
    const b = rows.length;
    // The graph attends over the C cache slots and then the new token: row r's own entries end at P, the token is at C.
    const total = capacity + 1;
    const step = { inputIds: new BigInt64Array(b), mask: new BigInt64Array(b * total), positions: new BigInt64Array(b), batch: b, hasPast: true };
    rows.forEach((row, r) => {
      step.inputIds[r] = BigInt(row.generated[row.generated.length - 1] as number);
      step.mask.fill(1n, r * total + (p - row.cached), r * total + p);
      step.mask[r * total + capacity] = 1n;
      step.positions[r] = BigInt(row.cached);
    });
    const outputs = await this.run(stepFeeds(this.inputNames, step, this.cache.past), this.cache.stepFetches);
    const logits = logitsOf(this.model, outputs);
    this.cache.absorb(outputs);
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
    const sources = this.cache.sources(this.rows.flatMap((r, index) => (r.finish === undefined ? [index] : [])));
    this.rows = this.rows.filter((r) => r.finish === undefined);
    this.cache.rebuild(this.cachedCounts(), sources);
    for (const row of finished) this.end(row);
  }

  /** session.run fetching `fetches`, or every output. */
  private run(feeds: Record<string, ort.Tensor>, fetches: string[] | undefined): Promise<ort.InferenceSession.OnnxValueMapType> {
    return fetches === undefined ? this.model.session.run(feeds) : this.model.session.run(feeds, fetches);
  }

  /** Cached entries of each row, in row order. */
  private cachedCounts(): number[] {
    return this.rows.map((r) => r.cached);
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

function logitsOf(model: DecodeModel, outputs: ort.InferenceSession.OnnxValueMapType): Float32Array {
  const logits = outputs[LOGITS];
  if (logits === undefined) throw new ModelError("model_io_mismatch", "the model returned no logits", { model: model.name });
  return logits.data as Float32Array;
}

/** One step's inputs for `batch` rows: ids [B,S], mask [B, attended slots], positions [B,S]. */
interface StepInputs {
  batch: number;
  inputIds: BigInt64Array;
  mask: BigInt64Array;
  positions: BigInt64Array;
  /** Whether the past is non-empty (use_cache_branch). */
  hasPast: boolean;
}

/** A step's feeds, only those the graph declares (position_ids and use_cache_branch are optional), with the past. */
function stepFeeds(inputNames: Set<string>, step: StepInputs, past: Record<string, ort.Tensor>): Record<string, ort.Tensor> {
  const { batch } = step;
  const feeds: Record<string, ort.Tensor> = {
    [INPUT_IDS]: new ort.Tensor("int64", step.inputIds, [batch, step.inputIds.length / batch]),
    [ATTENTION_MASK]: new ort.Tensor("int64", step.mask, [batch, step.mask.length / batch]),
  };
  if (inputNames.has(POSITION_IDS)) feeds[POSITION_IDS] = new ort.Tensor("int64", step.positions, [batch, step.positions.length / batch]);
  if (inputNames.has(USE_CACHE_BRANCH)) feeds[USE_CACHE_BRANCH] = new ort.Tensor("bool", new Uint8Array([step.hasPast ? 1 : 0]), [1]);
  for (const [name, tensor] of Object.entries(past)) if (inputNames.has(name)) feeds[name] = tensor;
  return feeds;
}

/** Feeds for one sequence's step: `stepIds` after `pastLength` cached tokens, all attended. */
export function buildFeeds(inputNames: Set<string>, stepIds: number[], pastLength: number, past: Record<string, ort.Tensor>): Record<string, ort.Tensor> {
  const n = stepIds.length;
  const positions = new BigInt64Array(n);
  for (let i = 0; i < n; i++) positions[i] = BigInt(pastLength + i);
  return stepFeeds(
    inputNames,
    { batch: 1, inputIds: BigInt64Array.from(stepIds, (v) => BigInt(v)), mask: new BigInt64Array(pastLength + n).fill(1n), positions, hasPast: pastLength > 0 },
    past,
  );
}
