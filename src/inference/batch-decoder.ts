import * as ort from "onnxruntime-node";
import { ModelError } from "../common/errors.js";
import { Prng } from "../common/prng.js";
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

/** Where a row's cached entries are: row `index` of a cache `past` of length `length`, right-aligned. */
interface CacheSource {
  past: Record<string, ort.Tensor>;
  length: number;
  index: number;
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
 */
export class BatchDecoder {
  private readonly waiting: Row[] = [];
  private rows: Row[] = [];
  private past: Record<string, ort.Tensor>;
  /** P: the length of the batch's cache. */
  private pastLength = 0;
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
    this.maxBatch = this.inputNames.has("position_ids") ? maxBatch : 1;
    this.past = emptyPast(model, 0);
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
      this.past = emptyPast(this.model, 0);
      this.pastLength = 0;
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
    const current = { past: this.past, length: this.pastLength };
    const sources: CacheSource[] = this.rows.map((_, index) => ({ ...current, index }));
    this.rows.push(row);
    sources.push({ past, length: pastLength, index: 0 });
    this.rebuildCache(sources);
  }

  /**
   * Runs the prompt with an empty past and returns the logits of its last position and the
   * cache. Our own graphs compute logits for the last position only, so the prompt is one
   * run. A graph in optimum's layout computes them for every position (a [S, vocab] matmul
   * and copy), so there a long prompt runs all but its last token asking only for the KV
   * outputs (onnxruntime then skips the lm_head) and the last token on its own: prefill of
   * 1000 tokens on tiny-gpt2 drops from ~800 ms to ~50 ms, for one more read of the weights.
   */
  private async prefill(promptIds: number[]): Promise<{ logits: Float32Array; past: Record<string, ort.Tensor>; pastLength: number }> {
    let past = emptyPast(this.model, 1);
    let pastLength = 0;
    let ids = promptIds;
    if (this.model.lastLogitsOnly !== true && ids.length > PREFILL_SPLIT_TOKENS) {
      const head = ids.slice(0, -1);
      past = nextPast(this.model, await this.model.session.run(buildFeeds(this.inputNames, head, 0, past), presentNames(this.model)));
      pastLength = head.length;
      ids = ids.slice(-1);
    }
    const outputs = await this.model.session.run(buildFeeds(this.inputNames, ids, pastLength, past));
    const all = logitsOf(this.model, outputs);
    return { logits: all.subarray(all.length - this.model.vocabSize), past: nextPast(this.model, outputs), pastLength: pastLength + ids.length };
  }

  /** One decode step for every row: each row's last token in, one token per row out. */
  private async decodeStep(): Promise<void> {
    const rows = this.rows;
    const b = rows.length;
    const total = this.pastLength + 1;
    const inputIds = new BigInt64Array(b);
    const mask = new BigInt64Array(b * total);
    const positions = new BigInt64Array(b);
    rows.forEach((row, r) => {
      inputIds[r] = BigInt(row.generated[row.generated.length - 1] as number);
      mask.fill(1n, r * total + (this.pastLength - row.cached), (r + 1) * total);
      positions[r] = BigInt(row.cached);
    });
    const feeds: Record<string, ort.Tensor> = {
      input_ids: new ort.Tensor("int64", inputIds, [b, 1]),
      attention_mask: new ort.Tensor("int64", mask, [b, total]),
    };
    if (this.inputNames.has("position_ids")) feeds.position_ids = new ort.Tensor("int64", positions, [b, 1]);
    if (this.inputNames.has("use_cache_branch")) feeds.use_cache_branch = new ort.Tensor("bool", new Uint8Array([1]), [1]);
    for (const [name, tensor] of Object.entries(this.past)) if (this.inputNames.has(name)) feeds[name] = tensor;

    const outputs = await this.model.session.run(feeds);
    const logits = logitsOf(this.model, outputs);
    this.past = nextPast(this.model, outputs);
    this.pastLength = total;
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
    const current = { past: this.past, length: this.pastLength };
    const sources: CacheSource[] = [];
    this.rows.forEach((r, index) => {
      if (r.finish === undefined) sources.push({ ...current, index });
    });
    this.rows = this.rows.filter((r) => r.finish === undefined);
    this.rebuildCache(sources);
    for (const row of finished) this.end(row);
  }

  /**
   * Makes the batch cache for the current rows, as long as the longest of them: each row's
   * cached entries copied right-aligned from `sources[i]`, where row i's are now. A lone row
   * whose source is already exactly its cache (a solo job after its prefill) keeps it uncopied.
   */
  private rebuildCache(sources: CacheSource[]): void {
    const rows = this.rows;
    const length = rows.reduce((m, r) => Math.max(m, r.cached), 0);
    const only = sources[0];
    if (rows.length === 1 && only !== undefined && only.length === length && (only.past["past_key_values.0.key"]?.dims[0] ?? 0) === 1) {
      this.past = only.past;
      this.pastLength = length;
      return;
    }
    const { nHead: h, headDim: d } = this.model;
    const next = emptyPast(this.model, rows.length, length);
    rows.forEach((row, r) => {
      const src = sources[r] as CacheSource;
      for (const name of Object.keys(next)) {
        const to = (next[name] as ort.Tensor).data as Float32Array;
        const from = (src.past[name] as ort.Tensor).data as Float32Array;
        for (let head = 0; head < h; head++) {
          const fromEnd = ((src.index * h + head) * src.length + src.length) * d;
          const toEnd = ((r * h + head) * length + length) * d;
          to.set(from.subarray(fromEnd - row.cached * d, fromEnd), toEnd - row.cached * d);
        }
      }
    });
    this.past = next;
    this.pastLength = length;
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

function presentNames(model: DecodeModel): string[] {
  const names: string[] = [];
  for (let i = 0; i < model.nLayer; i++) names.push(`present.${i}.key`, `present.${i}.value`);
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

function nextPast(model: DecodeModel, outputs: ort.InferenceSession.OnnxValueMapType): Record<string, ort.Tensor> {
  const past: Record<string, ort.Tensor> = {};
  for (let i = 0; i < model.nLayer; i++) {
    for (const part of ["key", "value"]) {
      const present = outputs[`present.${i}.${part}`];
      if (present === undefined) throw new ModelError("model_io_mismatch", "the model returned no present key/value", { model: model.name, layer: i });
      past[`past_key_values.${i}.${part}`] = present;
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
