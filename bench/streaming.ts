/**
 * `npm run bench:streaming`: what streaming the text costs. A coordinator (child process, SQLite)
 * and, in this process, a CPU miner running tiny-gpt2 on the real engine with 8 jobs at once,
 * each followed by an SSE client here. Rounds alternate the miner streaming its text (protocol 4
 * text frames) and not (progress frames only); the same 8 prompts and seeds each round.
 *
 * Prints the miner's decode tokens/s with and without streaming (the cost must stay under 5%),
 * the time from a token being sampled on the miner to its delta reaching the SSE client
 * (p50/p99; the miner and the clients share this process's clock), and the coordinator's CPU
 * per 1,000 deltas. BENCH_ROUNDS (default 6), BENCH_TOKENS (default 192) tune it.
 */
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { silentLogger } from "../src/common/logger.js";
import { databasePath } from "../src/coordinator/coordinator.js";
import { SqliteJobStore } from "../src/coordinator/store/sqlite/sqlite-job-store.js";
import type { Engine, GenerateRequest, GenerateResult } from "../src/inference/engine.js";
import { loadMinerConfig } from "../src/miner/config.js";
import { createEngine } from "../src/miner/engine-factory.js";
import { Miner } from "../src/miner/miner.js";
import { ensureModel, median, startCoordinator, stopChild } from "./bench-support.js";

const ROOT = path.resolve(import.meta.dirname, "..");
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 6);
const TOKENS = Number(process.env.BENCH_TOKENS ?? 192);
const JOBS = 8;

/** When each token's text was sampled, by job: [end offset in the text, ms]. */
type Samples = Map<string, { end: number; at: number }[]>;

/** The engine, recording when each token's text comes out of it (what the miner then sends). */
function tracing(engine: Engine, samples: Samples, spans: { start: number; end: number; tokens: number }[]): Engine {
  return {
    initialize: () => engine.initialize(),
    models: () => engine.models(),
    close: () => engine.close(),
    generate: async (request: GenerateRequest): Promise<GenerateResult> => {
      const jobText = request.prompt;
      const list: { end: number; at: number }[] = [];
      samples.set(jobText, list);
      let length = 0;
      const start = performance.now();
      const result = await engine.generate({
        ...request,
        onToken: (e) => {
          length += e.delta.length;
          list.push({ end: length, at: performance.now() });
          request.onToken?.(e);
        },
      });
      spans.push({ start, end: performance.now(), tokens: result.usage.completion_tokens });
      return result;
    },
  };
}

function cpuMs(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
  // utime and stime are fields 14 and 15 of the whole line (12 and 13 after "pid (comm) ").
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100;
}

function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? Number.NaN : s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
}

interface Round {
  streaming: boolean;
  tokensPerSecond: number;
  latencies: number[];
  deltas: number;
  coordinatorCpuMs: number;
  matched: boolean;
}

async function follow(url: string, key: string, jobId: string, onToken: (index: number, text: string, at: number) => void): Promise<{ completed: boolean }> {
  const res = await fetch(`${url}/v1/jobs/${jobId}/events`, { headers: { authorization: `Bearer ${key}` } });
  const decoder = new TextDecoder();
  let buf = "";
  let completed = false;
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
    const at = performance.now();
    buf += decoder.decode(chunk, { stream: true });
    let i: number;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, i);
      buf = buf.slice(i + 2);
      const event = /^event: (.*)$/m.exec(block)?.[1];
      const data = /^data: (.*)$/m.exec(block)?.[1];
      if (data === undefined) continue;
      const d = JSON.parse(data) as { index?: number; text?: string };
      if (event === "token") onToken(d.index ?? 0, d.text ?? "", at);
      if (event === "completed") completed = true;
    }
  }
  return { completed };
}

async function round(n: number, streaming: boolean, url: string, keys: { client: string; miner: string }, pid: number): Promise<Round> {
  const samples: Samples = new Map();
  const spans: { start: number; end: number; tokens: number }[] = [];
  const config = loadMinerConfig({
    optional: true,
    env: {},
    overrides: {
      "coordinator.url": url,
      "coordinator.key": keys.miner,
      "miner.name": `bench-${n}`,
      "miner.max_concurrent": JOBS,
      "miner.stream_text": streaming,
      "gpus.mode": "cpu",
      "inference.models_dir": path.join(ROOT, "models"),
      "inference.max_batch": JOBS,
      "log.level": "silent",
    },
  });
  const log = silentLogger();
  const miner = new Miner({ config, engine: tracing(createEngine(config, [], log), samples, spans), gpus: [], log });
  // Jobs first, streams open, then the miner: every delta arrives while a client listens.
  const prompts = Array.from({ length: JOBS }, (_, i) => `Streaming bench prompt number ${i}:`);
  const ids: string[] = [];
  for (const [i, prompt] of prompts.entries()) {
    const res = await fetch(`${url}/v1/jobs`, {
      method: "POST",
      headers: { authorization: `Bearer ${keys.client}`, "content-type": "application/json" },
      body: JSON.stringify({ model: "tiny-gpt2", input: prompt, parameters: { max_new_tokens: TOKENS, seed: 100 + i, temperature: 0.8 } }),
    });
    ids.push(((await res.json()) as { job_id: string }).job_id);
  }
  const latencies: number[] = [];
  let deltas = 0;
  const texts = new Map<string, string>();
  const streams = ids.map((id, i) =>
    follow(url, keys.client, id, (index, text, at) => {
      deltas++;
      const before = texts.get(id) ?? "";
      texts.set(id, before.slice(0, index) + text);
      // Only live pieces count: a catch-up from index 0 is not a token's way to the client.
      if (index !== before.length || text === "") return;
      for (const s of samples.get(prompts[i]!) ?? []) if (s.end > index && s.end <= index + text.length) latencies.push(at - s.at);
    }),
  );
  await new Promise((r) => setTimeout(r, 300));
  const cpuBefore = cpuMs(pid);
  await miner.start();
  const ended = await Promise.all(streams);
  const cpu = cpuMs(pid) - cpuBefore;
  await miner.stop({ graceMs: 0 });
  let matched = ended.every((e) => e.completed);
  for (const id of ids) {
    const d = (await (await fetch(`${url}/v1/jobs/${id}/download`, { headers: { authorization: `Bearer ${keys.client}` } })).json()) as { output: string };
    if (texts.get(id) !== d.output) matched = false;
  }
  const tokens = spans.reduce((a, s) => a + s.tokens, 0);
  const seconds = (Math.max(...spans.map((s) => s.end)) - Math.min(...spans.map((s) => s.start))) / 1000;
  return { streaming, tokensPerSecond: tokens / seconds, latencies, deltas, coordinatorCpuMs: cpu, matched };
}

async function main(): Promise<void> {
  await ensureModel(path.join(ROOT, "models"), "tiny-gpt2");
  const dir = mkdtempSync(path.join(tmpdir(), "aitbc-bench-streaming-"));
  const dataDir = path.join(dir, "data");
  const store = new SqliteJobStore(databasePath(dataDir));
  const keys = { client: (await store.createKey("client", "bench", "default", Date.now())).key, miner: (await store.createKey("miner", "bench", "default", Date.now())).key };
  await store.close();
  const { child, url } = await startCoordinator(dataDir, {
    AITBC_COORDINATOR_LIMITS_REQUESTS_PER_MINUTE: "1000000",
    AITBC_COORDINATOR_LIMITS_REQUESTS_PER_HOUR: "1000000",
  });
  const rounds: Round[] = [];
  try {
    for (let n = 0; n < ROUNDS; n++) {
      // Alternate which side goes first in each pair of rounds.
      const streaming = n % 4 === 0 || n % 4 === 3;
      const r = await round(n, streaming, url, keys, child.pid!);
      rounds.push(r);
      process.stderr.write(`round ${n + 1}/${ROUNDS}: ${streaming ? "streaming" : "progress only"} ${r.tokensPerSecond.toFixed(1)} tok/s, ${r.deltas} deltas${r.matched ? "" : " (TEXT MISMATCH)"}\n`);
    }
  } finally {
    await stopChild(child);
    rmSync(dir, { recursive: true, force: true });
  }
  const on = rounds.filter((r) => r.streaming);
  const off = rounds.filter((r) => !r.streaming);
  const tpsOn = median(on.map((r) => r.tokensPerSecond));
  const tpsOff = median(off.map((r) => r.tokensPerSecond));
  const lat = on.flatMap((r) => r.latencies);
  const cpuPer1k = median(on.map((r) => (r.coordinatorCpuMs * 1000) / Math.max(1, r.deltas)));
  const cpuOn = median(on.map((r) => r.coordinatorCpuMs));
  const cpuOff = median(off.map((r) => r.coordinatorCpuMs));
  console.log(`\n${JOBS} streamed jobs at once on one tiny-gpt2 CPU miner (max_concurrent ${JOBS}), ${TOKENS} tokens each, ${ROUNDS} rounds alternating`);
  console.log("| side | miner tokens/s (median) | deltas per round | coordinator CPU ms per round |");
  console.log("|---|---|---|---|");
  console.log(`| progress frames only | ${tpsOff.toFixed(1)} | ${median(off.map((r) => r.deltas)).toFixed(0)} | ${cpuOff.toFixed(0)} |`);
  console.log(`| text streamed | ${tpsOn.toFixed(1)} | ${median(on.map((r) => r.deltas)).toFixed(0)} | ${cpuOn.toFixed(0)} |`);
  console.log(`\ntoken sampled on the miner → delta at the SSE client: p50 ${percentile(lat, 50).toFixed(1)} ms, p99 ${percentile(lat, 99).toFixed(1)} ms (${lat.length} tokens)`);
  console.log(`coordinator CPU per 1,000 deltas: ${cpuPer1k.toFixed(0)} ms`);
  console.log(`streamed text equal to the downloads in every round: ${rounds.every((r) => r.matched) ? "yes" : "NO"}`);
  console.log(`ratio streaming / progress only (miner tokens/s): ${(tpsOn / tpsOff).toFixed(3)} (cost ${((1 - tpsOn / tpsOff) * 100).toFixed(1)}%, target < 5%)`);
}

await main();
