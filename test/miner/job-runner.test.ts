import { createHash } from "node:crypto";
import { describe, expect, it } from "vitest";
import { silentLogger } from "../../src/common/logger.js";
import type { GenerateResult } from "../../src/inference/engine.js";
import { FakeEngine } from "../../src/miner/fake-engine.js";
import { JobRunner, resultFrames } from "../../src/miner/job-runner.js";
import {
  RESULT_CHUNK_BYTES,
  RESULT_INLINE_MAX_BYTES,
  parseMinerFrame,
  type AssignFrame,
  type MinerFrame,
} from "../../src/protocol/frames.js";

function generated(text: string): GenerateResult {
  return {
    text,
    finish_reason: "length",
    usage: { prompt_tokens: 1, completion_tokens: 1 },
    timing: { time_to_first_token_ms: 1, tokens_per_second: 1, total_ms: 1 },
    token_ids: [1],
  };
}

const ref = { job_id: "job_big", attempt: 2, lease_token: "tok" };

function assignFrame(jobId: string, over: Partial<AssignFrame["job"]> = {}): AssignFrame {
  return {
    type: "assign",
    job: {
      job_id: jobId,
      model: "tiny-gpt2",
      prompt: "p",
      parameters: { max_new_tokens: 5, temperature: 0, top_k: 0, top_p: 1, repetition_penalty: 1, stop: [], seed: 1 },
      timeout_seconds: 30,
      ...over,
    },
    attempt: 1,
    lease_token: `tok-${jobId}`,
    lease_expires_at: new Date().toISOString(),
  };
}

async function runner(options: { slots?: number; failAfterTokens?: number } = {}) {
  const engine = new FakeEngine({
    tokensPerSecond: 1000,
    models: ["tiny-gpt2"],
    failAfterTokens: options.failAfterTokens ?? 0,
    crashAfterTokens: 0,
    hangAfterTokens: 0,
    exitAfterTokens: 0,
  });
  await engine.initialize();
  const sent: MinerFrame[] = [];
  const r = new JobRunner({
    engine,
    send: (f) => {
      sent.push(f);
      return true;
    },
    log: silentLogger(),
    slots: options.slots ?? 1,
    progressIntervalMs: 1_000_000,
  });
  return { r, sent };
}

describe("resultFrames", () => {
  it("sends a small output inline", () => {
    const frames = resultFrames(ref, generated("hello"));
    expect(frames).toHaveLength(1);
    expect(frames[0]).toMatchObject({ type: "result", output: "hello", output_bytes: 5 });
  });

  it("chunks a large output so the joined bytes match the sha256, also across multi-byte characters", () => {
    const text = "€".repeat(Math.ceil((RESULT_CHUNK_BYTES * 2.5) / 3)) + "end";
    expect(Buffer.byteLength(text)).toBeGreaterThan(RESULT_INLINE_MAX_BYTES);
    const frames = resultFrames(ref, generated(text));
    const chunks = frames.filter((f) => f.type === "result_chunk");
    const last = frames.at(-1)!;
    expect(chunks.map((c) => c.seq)).toEqual([0, 1, 2]);
    expect(last.type === "result" && last.chunks).toBe(3);
    expect(last.type === "result" && last.output).toBeUndefined();
    for (const f of frames) expect(parseMinerFrame(JSON.stringify(f)).ok).toBe(true);
    const joined = Buffer.concat(chunks.map((c) => Buffer.from(c.data, "base64")));
    expect(joined.toString("utf8")).toBe(text);
    expect(last.type === "result" && last.sha256).toBe(createHash("sha256").update(joined).digest("hex"));
    expect(last.type === "result" && last.output_bytes).toBe(joined.length);
  });
});

describe("JobRunner", () => {
  it("hands back an assignment that arrives without a free slot", async () => {
    const { r, sent } = await runner({ slots: 1 });
    r.assign(assignFrame("job_a"));
    r.assign(assignFrame("job_b"));
    expect(sent.find((f) => f.type === "released")).toMatchObject({ job_id: "job_b", reason: "no_free_slot" });
    await r.allDone();
    expect(sent.some((f) => f.type === "result" && f.job_id === "job_a")).toBe(true);
  });

  it("reports an engine failure as a retryable fail with the engine's code", async () => {
    const { r, sent } = await runner({ failAfterTokens: 2 });
    r.assign(assignFrame("job_err"));
    await r.allDone();
    expect(sent.find((f) => f.type === "fail")).toMatchObject({ job_id: "job_err", code: "engine_error", retryable: true });
  });

  it("resends a result acknowledged as invalid, and forgets it once committed", async () => {
    const { r, sent } = await runner();
    r.assign(assignFrame("job_ack"));
    await r.allDone();
    const count = (): number => sent.filter((f) => f.type === "result").length;
    expect(count()).toBe(1);
    r.ack({ type: "ack", job_id: "job_ack", attempt: 1, of: "result", status: "invalid" });
    expect(count()).toBe(2);
    expect(r.inFlight()).toEqual([{ job_id: "job_ack", attempt: 1, lease_token: "tok-job_ack", state: "finished" }]);
    // An ack for another frame kind does not settle it.
    r.ack({ type: "ack", job_id: "job_ack", attempt: 1, of: "fail", status: "committed" });
    expect(r.tracked).toBe(1);
    r.ack({ type: "ack", job_id: "job_ack", attempt: 1, of: "result", status: "duplicate" });
    expect(r.tracked).toBe(0);
  });

  it("ignores a duplicate assign of the same attempt", async () => {
    const { r, sent } = await runner({ slots: 2 });
    r.assign(assignFrame("job_dup"));
    r.assign(assignFrame("job_dup"));
    await r.allDone();
    expect(sent.filter((f) => f.type === "started")).toHaveLength(1);
    expect(sent.filter((f) => f.type === "result")).toHaveLength(1);
  });
});

describe("JobRunner timeouts", () => {
  it("does not time out at once when timeout_seconds is beyond setTimeout's range", async () => {
    const { r, sent } = await runner();
    r.assign(assignFrame("job_forever", { timeout_seconds: 10 ** 9 }));
    await r.allDone();
    expect(sent.find((f) => f.type === "fail")).toBeUndefined();
    expect(sent.find((f) => f.type === "result")).toMatchObject({ job_id: "job_forever", finish_reason: "length" });
  });
});
