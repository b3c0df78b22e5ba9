import { AppError } from "../common/errors.js";
import { Prng } from "../common/prng.js";
import type { Engine, EngineModelInfo, GenerateRequest, GenerateResult } from "../inference/engine.js";
import { StopSequenceMatcher } from "../inference/stop-sequences.js";
import type { FakeEngineOptions } from "./config.js";

/**
 * An Engine without a model, for fault-injection and end-to-end tests of the miner and the
 * coordinator: it "decodes" at a set speed, produces deterministic text from (prompt, seed), and
 * can be told to fail, hang or kill its process after N tokens. Enabled by `[fake_engine]
 * enabled = true` (or AITBC_MINER_FAKE_ENGINE_ENABLED=true). Never used in production paths.
 */
const WORDS = ["the", "miner", "ran", "a", "small", "model", "on", "one", "GPU", "and", "it", "worked", "well", "today"];

function hashString(s: string): number {
  let h = 2166136261;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 16777619);
  return h >>> 0;
}

export class FakeEngine implements Engine {
  private initialized = false;
  private closed = false;
  private dead = false;

  constructor(private readonly options: FakeEngineOptions) {}

  initialize(): Promise<void> {
    this.initialized = true;
    return Promise.resolve();
  }

  models(): EngineModelInfo[] {
    return this.initialized ? this.options.models.map((name) => ({ name, device: "fake", n_positions: 1024 })) : [];
  }

  async generate(request: GenerateRequest): Promise<GenerateResult> {
    if (!this.initialized || this.closed) throw new AppError("engine_not_ready", "engine is not initialized");
    if (this.dead) throw new AppError("engine_worker_failed", "the fake engine crashed earlier", { retryable: true });
    if (!this.options.models.includes(request.model)) {
      throw new AppError("model_unavailable", "model is not loaded", { details: { model: request.model } });
    }
    const o = this.options;
    const start = performance.now();
    const stepMs = 1000 / o.tokensPerSecond;
    const random = new Prng(hashString(request.prompt) ^ request.params.seed);
    const rand = (): number => random.next();
    const maxTokens = request.params.max_new_tokens;
    const ids: number[] = [];
    let text = "";
    const matcher = new StopSequenceMatcher(request.params.stop);
    let tokensPerSecond = 0;
    let firstTokenMs = 0;
    let finish: GenerateResult["finish_reason"] = "length";
    const signal = request.signal;

    for (let i = 0; i < maxTokens; i++) {
      if (o.hangAfterTokens > 0 && i >= o.hangAfterTokens) {
        // Hung: no more tokens, but an abort still ends the call (as a stuck step would on return).
        await new Promise<void>((resolve) => {
          if (signal?.aborted) resolve();
          signal?.addEventListener("abort", () => resolve(), { once: true });
        });
      }
      if (signal?.aborted) {
        finish = "cancelled";
        break;
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(done, stepMs);
        function done(): void {
          clearTimeout(timer);
          signal?.removeEventListener("abort", done);
          resolve();
        }
        signal?.addEventListener("abort", done, { once: true });
      });
      if (signal?.aborted) {
        finish = "cancelled";
        break;
      }
      if (o.failAfterTokens > 0 && i >= o.failAfterTokens) {
        throw new AppError("engine_error", "fake engine failure injected", { retryable: true });
      }
      if (o.crashAfterTokens > 0 && i >= o.crashAfterTokens) {
        this.dead = true;
        throw new AppError("engine_worker_failed", "fake engine crash injected", { retryable: true });
      }
      if (o.exitAfterTokens > 0 && i >= o.exitAfterTokens) {
        // Simulates the whole miner process dying mid-job (OOM kill, segfault in a native op).
        process.exit(70);
      }
      const id = Math.floor(rand() * WORDS.length);
      ids.push(id);
      const piece = (ids.length === 1 ? "" : " ") + WORDS[id]!;
      // As the real engine: text that may start a stop sequence is held back, so the deltas
      // streamed add up to the result exactly.
      const { delta, stopped } = matcher.push(piece);
      text += delta;
      const now = performance.now();
      if (i === 0) firstTokenMs = now - start;
      const decodeSeconds = (now - start) / 1000;
      tokensPerSecond = decodeSeconds > 0 ? ids.length / decodeSeconds : 0;
      request.onToken?.({ delta, tokens: ids.length, maxTokens, tokensPerSecond });
      if (stopped) {
        finish = "stop";
        break;
      }
    }
    const rest = matcher.flush();
    if (rest !== "") {
      text += rest;
      request.onToken?.({ delta: rest, tokens: ids.length, maxTokens, tokensPerSecond });
    }
    const totalMs = performance.now() - start;
    return {
      text,
      finish_reason: finish,
      usage: { prompt_tokens: Math.max(1, request.prompt.split(/\s+/).filter(Boolean).length), completion_tokens: ids.length },
      timing: {
        time_to_first_token_ms: firstTokenMs,
        tokens_per_second: totalMs > 0 ? (ids.length * 1000) / totalMs : 0,
        total_ms: totalMs,
      },
      token_ids: ids,
    };
  }

  close(): Promise<void> {
    this.closed = true;
    return Promise.resolve();
  }
}
