// Greedy generation with @huggingface/transformers 4.3.2 (transformers.js v4) in its own process,
// for bench/inference.ts: the model's own generate() on token ids, timed per token through a
// streamer, with onnxruntime's intra-op threads set as for every engine in the bench.
// Usage: node hf-transformers-generate.mjs '{"modelsDir":…,"model":…,"threads":2,"cases":[{"ids":[…],"max_new_tokens":64}],"repeat":2}'
// Prints one JSON object: { results: [{ ids, ms, ttft_ms, decode_tokens_per_second }], load_ms, rss_peak_bytes }.
import path from "node:path";
import { performance } from "node:perf_hooks";
import { AutoModelForCausalLM, BaseStreamer, env, Tensor } from "@huggingface/transformers";

const input = JSON.parse(process.argv[2] ?? "{}");
env.allowRemoteModels = false;
env.allowLocalModels = true;
env.localModelPath = input.modelsDir;

let rssPeak = 0;
const sample = () => (rssPeak = Math.max(rssPeak, process.memoryUsage().rss));
const sampler = setInterval(sample, 20);

/** Records when each step's tokens arrive (put is called once for the prompt, then once per new token). */
class StepTimes extends BaseStreamer {
  times = [];
  put() {
    this.times.push(performance.now());
  }
  end() {}
}

const t0 = performance.now();
const model = await AutoModelForCausalLM.from_pretrained(path.basename(input.model), {
  local_files_only: true,
  dtype: "fp32",
  device: "cpu",
  model_file_name: "decoder_model_merged",
  session_options: { intraOpNumThreads: input.threads, interOpNumThreads: 1 },
});
const loadMs = performance.now() - t0;

const results = [];
for (let r = 0; r < (input.repeat ?? 1); r++) {
  for (const c of input.cases) {
    const ids = new Tensor("int64", BigInt64Array.from(c.ids, BigInt), [1, c.ids.length]);
    const mask = new Tensor("int64", new BigInt64Array(c.ids.length).fill(1n), [1, c.ids.length]);
    const streamer = new StepTimes();
    const s = performance.now();
    const out = await model.generate({ input_ids: ids, attention_mask: mask, max_new_tokens: c.max_new_tokens, min_new_tokens: c.max_new_tokens, do_sample: false, streamer });
    const ms = performance.now() - s;
    // times[0] is the prompt; times[1] the first new token, times[n] the n-th.
    const first = streamer.times[1] ?? s;
    const last = streamer.times[streamer.times.length - 1] ?? first;
    const n = streamer.times.length - 1;
    sample();
    results.push({
      ids: Array.from(out.data, (v) => Number(v)).slice(c.ids.length),
      ms,
      ttft_ms: first - s,
      decode_tokens_per_second: n > 1 ? (n - 1) / ((last - first) / 1000) : 0,
    });
  }
}
clearInterval(sampler);
sample();
rssPeak = Math.max(rssPeak, process.resourceUsage().maxRSS * 1024);
await model.dispose();
process.stdout.write(JSON.stringify({ results, load_ms: loadMs, rss_peak_bytes: rssPeak }) + "\n");
