/**
 * Our model run step by step with its full next-token logits, for the bench's correctness and
 * accuracy sections (the engine returns token ids, not distributions). The same ONNX file and
 * session settings as the engine's CPU sessions; the cache is the graph's own `present`
 * outputs fed back as `past_key_values`, batch 1.
 */
import type * as ort from "onnxruntime-node";
import { buildFeeds } from "../src/inference/batch-decoder.js";
import { emptyPast, pastFrom } from "../src/inference/kv-cache.js";
import { loadModelInfo, type ModelInfo } from "../src/inference/models/model-info.js";
import { kvNames, LOGITS, PRESENT } from "../src/inference/models/model-io.js";
import { createSession } from "../src/inference/session-factory.js";

export class OrtSteps {
  private past: Record<string, ort.Tensor> = {};
  private length = 0;
  private readonly inputNames: Set<string>;
  private readonly fetches: string[];

  private constructor(
    private readonly session: ort.InferenceSession,
    private readonly info: ModelInfo,
  ) {
    this.inputNames = new Set(session.inputNames);
    this.fetches = [LOGITS, ...kvNames(PRESENT, info.nLayer)];
    this.reset();
  }

  static async open(dir: string, threads: number, threadSpinning: boolean): Promise<OrtSteps> {
    const info = loadModelInfo(dir);
    const { session } = await createSession(info.onnxPath, { kind: "cpu" }, { executionProvider: "cpu", intraOpThreads: threads, interOpThreads: 0, graphOptimizationLevel: "all", threadSpinning });
    return new OrtSteps(session, info);
  }

  get vocabSize(): number {
    return this.info.vocabSize;
  }

  reset(): void {
    this.length = 0;
    this.past = emptyPast(this.info, 1);
  }

  /** Feeds `ids` after what was fed before (the decoder's own feeds); returns the logits that follow the last of them. */
  async feed(ids: readonly number[]): Promise<Float32Array> {
    const out = await this.session.run(buildFeeds(this.inputNames, [...ids], this.length, this.past), this.fetches);
    this.past = pastFrom(this.info, out, PRESENT);
    this.length += ids.length;
    const all = out[LOGITS]!.data as Float32Array;
    return all.slice(all.length - this.info.vocabSize);
  }

  async close(): Promise<void> {
    await this.session.release();
  }
}
