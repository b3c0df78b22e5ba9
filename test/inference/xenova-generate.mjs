// Greedy generation with @xenova/transformers 2.17.2's text-generation pipeline, in its own
// process: it pins onnxruntime-node 1.14, which must not share a process with our 1.30.
// Usage: node xenova-generate.mjs '{"modelsDir":…,"model":…,"cases":[{"prompt":…,"max_new_tokens":…}],"repeat":1,"ids":true}'
// ("ids": false skips the extra model.generate call that returns token ids, for benchmarks.)
// Prints one JSON object: { results: [{ prompt, max_new_tokens, text, ids, ms, ttft_ms }], load_ms, rss_peak_bytes }.
import { performance } from "node:perf_hooks";
import { env, pipeline } from "@xenova/transformers";

const input = JSON.parse(process.argv[2] ?? "{}");
env.allowRemoteModels = false;
env.allowLocalModels = true;
env.localModelPath = input.modelsDir;

let rssPeak = 0;
const sample = () => (rssPeak = Math.max(rssPeak, process.memoryUsage().rss));
const sampler = setInterval(sample, 20);

const t0 = performance.now();
const generator = await pipeline("text-generation", input.model, { quantized: false, local_files_only: true });
const loadMs = performance.now() - t0;

const results = [];
for (let r = 0; r < (input.repeat ?? 1); r++) {
  for (const c of input.cases) {
    const { input_ids } = generator.tokenizer(c.prompt);
    const promptLength = input_ids.dims[1];
    // Time to first token: a one-token generation is prefill plus one step.
    const f0 = performance.now();
    await generator(c.prompt, { max_new_tokens: 1, do_sample: false });
    const ttft = performance.now() - f0;
    const s = performance.now();
    const out = await generator(c.prompt, { max_new_tokens: c.max_new_tokens, do_sample: false });
    const ms = performance.now() - s;
    let ids = [];
    if (input.ids !== false) {
      const seqs = await generator.model.generate(input_ids, { max_new_tokens: c.max_new_tokens, do_sample: false });
      ids = Array.from(seqs[0], (v) => Number(v)).slice(promptLength);
    }
    sample();
    results.push({ prompt: c.prompt, max_new_tokens: c.max_new_tokens, text: out[0].generated_text, ids, ms, ttft_ms: ttft });
  }
}
clearInterval(sampler);
sample();
rssPeak = Math.max(rssPeak, process.resourceUsage().maxRSS * 1024);
process.stdout.write(JSON.stringify({ results, load_ms: loadMs, rss_peak_bytes: rssPeak }) + "\n");
