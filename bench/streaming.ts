/**
 * `npm run bench:streaming`: what streaming the text costs. A coordinator (child process, SQLite)
 * and, in this process, a CPU miner running tiny-gpt2 on the real engine with 8 jobs at once,
 * each followed by an SSE client (in a process of their own, bench/streaming-clients.ts). Rounds alternate the miner streaming its text (protocol 4
 * text frames) and not (progress frames only); the same 8 prompts and seeds each round.
 *
 * Prints the miner's decode tokens/s with and without streaming (the cost must stay under 5%),
 * the time from a token being sampled on the miner to its delta reaching the SSE client
 * (p50/p99; both processes read the machine's clock), and the coordinator's CPU
 * per 1,000 deltas. BENCH_ROUNDS (default 6), BENCH_TOKENS (default 192) tune it.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { silentLogger } from "../src/common/logger.js";
import { databasePath } from "../src/coordinator/coordinator.js";
import { SqliteJobStore } from "../src/coordinator/store/sqlite/sqlite-job-store.js";
import type { Engine, GenerateRequest, GenerateResult } from "../src/inference/engine.js";
import { loadMinerConfig } from "../src/miner/config.js";
import { createEngine } from "../src/miner/engine-factory.js";
import { Miner } from "../src/miner/miner.js";
import { cpuSeconds, ensureModel, median, startCoordinator, stopChild, tsx } from "./bench-support.js";

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
          list.push({ end: length, at: performance.timeOrigin + performance.now() });
          request.onToken?.(e);
        },
      });
      spans.push({ start, end: performance.now(), tokens: result.usage.completion_tokens });
      return result;
    },
  };
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

interface ClientLine {
  id: string;
  opened?: boolean;
  index?: number;
  length?: number;
  at?: number;
  live?: boolean;
  text?: string;
  completed?: boolean;
}

/** The SSE clients in their own process (bench/streaming-clients.ts): their lines, once every stream ended, and when all opened. */
function clients(url: string, key: string, ids: string[]): { opened: Promise<void>; lines: Promise<ClientLine[]> } {
  const child = tsx([path.join(ROOT, "bench/streaming-clients.ts")], {}, "pipe", "pipe");
  child.stdin!.end(`${JSON.stringify({ url, key, ids })}\n`);
  const lines: ClientLine[] = [];
  let buf = "";
  let opened: () => void = () => undefined;
  const openedP = new Promise<void>((resolve) => (opened = resolve));
  child.stdout!.on("data", (d: Buffer) => {
    buf += d.toString();
    let i: number;
    while ((i = buf.indexOf("\n")) >= 0) {
      const l = JSON.parse(buf.slice(0, i)) as ClientLine;
      buf = buf.slice(i + 1);
      lines.push(l);
      if (lines.filter((x) => x.opened === true).length === ids.length) opened();
    }
  });
  return { opened: openedP, lines: new Promise((resolve) => child.once("exit", () => resolve(lines))) };
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
  const followers = clients(url, keys.client, ids);
  await followers.opened;
  const cpuBefore = cpuSeconds(pid) * 1000;
  await miner.start();
  const lines = await followers.lines;
  const cpu = cpuSeconds(pid) * 1000 - cpuBefore;
  await miner.stop({ graceMs: 0 });
  const latencies: number[] = [];
  let deltas = 0;
  let matched = true;
  for (const [i, id] of ids.entries()) {
    const mine = lines.filter((l) => l.id === id);
    const end = mine.find((l) => l.text !== undefined);
    const d = (await (await fetch(`${url}/v1/jobs/${id}/download`, { headers: { authorization: `Bearer ${keys.client}` } })).json()) as { output: string };
    if (end?.completed !== true || end.text !== d.output) matched = false;
    for (const l of mine) {
      if (l.index === undefined || l.length === undefined || l.at === undefined) continue;
      deltas++;
      // Only live pieces count: a catch-up from index 0 is not a token's way to the client.
      if (l.live !== true || l.length === 0) continue;
      for (const s of samples.get(prompts[i]!) ?? []) if (s.end > l.index && s.end <= l.index + l.length) latencies.push(l.at - s.at);
    }
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
