/**
 * Our model run step by step with its full next-token logits, for the bench's correctness and
 * accuracy sections (the engine returns token ids, not distributions). The same ONNX file and
 * session settings as the engine's CPU sessions; the cache is the graph's own `present`
 * outputs fed back as `past_key_values`, batch 1.
 */
import * as ort from "onnxruntime-node";
import { loadModelInfo, type ModelInfo } from "../src/inference/models/model-info.js";
import { createSession } from "../src/inference/session-factory.js";

export class OrtSteps {
  private past: Record<string, ort.Tensor> = {};
  private length = 0;

  private constructor(
    private readonly session: ort.InferenceSession,
    private readonly info: ModelInfo,
  ) {
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
    const { nLayer, nHead, headDim } = this.info;
    this.length = 0;
    this.past = {};
    for (let i = 0; i < nLayer; i++) {
      for (const kv of ["key", "value"]) this.past[`past_key_values.${i}.${kv}`] = new ort.Tensor("float32", new Float32Array(0), [1, nHead, 0, headDim]);
    }
  }

  /** Feeds `ids` after what was fed before; returns the logits that follow the last of them. */
  async feed(ids: readonly number[]): Promise<Float32Array> {
    const s = ids.length;
    const total = this.length + s;
    const feeds: Record<string, ort.Tensor> = {
      ...this.past,
      input_ids: new ort.Tensor("int64", BigInt64Array.from(ids, BigInt), [1, s]),
      attention_mask: new ort.Tensor("int64", new BigInt64Array(total).fill(1n), [1, total]),
    };
    if (this.session.inputNames.includes("position_ids")) {
      feeds.position_ids = new ort.Tensor("int64", BigInt64Array.from({ length: s }, (_, j) => BigInt(this.length + j)), [1, s]);
    }
    const fetches = ["logits", ...Object.keys(this.past).map((name) => name.replace("past_key_values", "present"))];
    const out = await this.session.run(feeds, fetches);
    for (const name of Object.keys(this.past)) this.past[name] = out[name.replace("past_key_values", "present")]!;
    this.length = total;
    const logits = out.logits!;
    const v = this.info.vocabSize;
    const all = logits.data as Float32Array;
    return all.slice(all.length - v);
  }

  async close(): Promise<void> {
    await this.session.release();
  }
}
