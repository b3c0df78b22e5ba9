import { execFile } from "node:child_process";
import path from "node:path";
import { promisify } from "node:util";
import * as ort from "onnxruntime-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ONNX_MODEL_PATH } from "../../src/inference/models/build-model.js";
import { Tokenizer } from "../../src/inference/tokenizer.js";
import { buildTinyModel, TINY } from "./tiny-model.js";

const C = TINY.config;
const MAX_NEW = 12;
const PROMPTS = ["Hello world, this is GPT-2!", "The miner", "A longer prompt, with more words: one two three"];

let modelsDir: string;
let modelDir: string;
let cleanup: () => void;

beforeAll(async () => {
  ({ modelsDir, modelDir, cleanup } = await buildTinyModel());
});
afterAll(() => cleanup());

/** Our own greedy loop with onnxruntime-node 1.30 and the KV cache; stops at <|endoftext|>. */
async function greedy(session: ort.InferenceSession, promptIds: number[]): Promise<number[]> {
  const d = C.nEmbd / C.nHead;
  const feeds: Record<string, ort.Tensor> = {};
  for (let i = 0; i < C.nLayer; i++) {
    for (const part of ["key", "value"]) feeds[`past_key_values.${i}.${part}`] = new ort.Tensor("float32", new Float32Array(0), [1, C.nHead, 0, d]);
  }
  const out: number[] = [];
  let step = promptIds;
  let past = 0;
  while (out.length < MAX_NEW) {
    const total = past + step.length;
    feeds.input_ids = new ort.Tensor("int64", BigInt64Array.from(step.map(BigInt)), [1, step.length]);
    feeds.attention_mask = new ort.Tensor("int64", new BigInt64Array(total).fill(1n), [1, total]);
    feeds.position_ids = new ort.Tensor("int64", BigInt64Array.from(step.map((_, i) => BigInt(past + i))), [1, step.length]);
    const r = await session.run(feeds);
    // What we build: logits for the last position only, which transformers.js must read as it reads optimum's [B,S,V].
    expect(r.logits!.dims).toEqual([1, 1, C.vocabSize]);
    const last = r.logits!.data as Float32Array;
    let best = 0;
    for (let v = 1; v < C.vocabSize; v++) if (last[v]! > last[best]!) best = v;
    if (best === C.eosTokenId) break;
    out.push(best);
    for (let i = 0; i < C.nLayer; i++) {
      for (const part of ["key", "value"]) feeds[`past_key_values.${i}.${part}`] = r[`present.${i}.${part}`]!;
    }
    past = total;
    step = [best];
  }
  return out;
}

describe("format: @xenova/transformers 2.17.2 consumes the built folder", () => {
  it("loads tiny-gpt2 offline and its text-generation pipeline produces our greedy continuation", async () => {
    const child = await promisify(execFile)(
      process.execPath,
      [path.join(import.meta.dirname, "transformers-js-generate.mjs"), modelsDir, "tiny-gpt2", String(MAX_NEW), JSON.stringify(PROMPTS)],
      { timeout: 60_000 },
    );
    const result = JSON.parse(child.stdout) as { texts: string[] };

    const tokenizer = await Tokenizer.load(modelDir);
    const session = await ort.InferenceSession.create(path.join(modelDir, ONNX_MODEL_PATH));
    try {
      const expected: string[] = [];
      for (const prompt of PROMPTS) {
        const ids = tokenizer.encode(prompt);
        const generated = await greedy(session, ids);
        expect(generated.length).toBeGreaterThan(0);
        expected.push(tokenizer.decode([...ids, ...generated]));
      }
      expect(result.texts).toEqual(expected);
    } finally {
      await session.release();
    }
  });
});
