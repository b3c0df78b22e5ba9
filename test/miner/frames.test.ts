import { createHash } from "node:crypto";
import { describe, expect, it } from "vitest";
import {
  MAX_FRAME_BYTES,
  RESULT_INLINE_MAX_BYTES,
  assembleResult,
  encodeFrame,
  parseCoordinatorFrame,
  parseMinerFrame,
  type AssignFrame,
  type HelloFrame,
  type ResultChunkFrame,
  type ResultFrame,
} from "../../src/protocol/frames.js";
import { resultFrames } from "../../src/miner/job-runner.js";

const hello: HelloFrame = {
  type: "hello",
  protocol_version: 1,
  miner_name: "rig-1",
  version: "0.1.0",
  gpus: [{ index: 0, name: "NVIDIA GeForce RTX 4090", vram_total_mb: 24564, vram_free_mb: 24000 }],
  models: ["tiny-gpt2"],
  slots: 2,
  free_slots: 1,
  in_flight: [{ job_id: "job_1", attempt: 1, lease_token: "tok", state: "running" }],
};

const assign: AssignFrame = {
  type: "assign",
  job: {
    job_id: "job_1",
    model: "tiny-gpt2",
    prompt: "Hello",
    parameters: { max_new_tokens: 8, temperature: 0, top_k: 0, top_p: 1, repetition_penalty: 1, stop: [], seed: 1 },
    timeout_seconds: 60,
  },
  attempt: 1,
  lease_token: "tok",
  lease_expires_at: new Date().toISOString(),
};

function result(output: string): ResultFrame {
  return {
    type: "result",
    job_id: "job_1",
    attempt: 1,
    lease_token: "tok",
    output,
    output_bytes: Buffer.byteLength(output),
    sha256: createHash("sha256").update(output).digest("hex"),
    finish_reason: "length",
    usage: { prompt_tokens: 1, completion_tokens: 8 },
    timing: { time_to_first_token_ms: 1, tokens_per_second: 10, total_ms: 800 },
  };
}

describe("frames", () => {
  it("round-trips valid frames in each direction", () => {
    const h = parseMinerFrame(encodeFrame(hello));
    expect(h).toEqual({ ok: true, frame: hello });
    const a = parseCoordinatorFrame(Buffer.from(encodeFrame(assign)));
    expect(a).toEqual({ ok: true, frame: assign });
    expect(parseMinerFrame(encodeFrame(result("some text"))).ok).toBe(true);
  });

  it("refuses a frame from the wrong direction as unknown", () => {
    const r = parseCoordinatorFrame(encodeFrame(hello));
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.error.code).toBe("frame_unknown_type");
  });

  it("names the bad field of an invalid frame", () => {
    const r = parseMinerFrame({ ...hello, slots: -1 });
    expect(r.ok).toBe(false);
    if (!r.ok) {
      expect(r.error.code).toBe("frame_invalid");
      expect(r.error.message).toContain("/slots");
    }
    const extra = parseMinerFrame({ type: "pull", free_slots: 1, surprise: true });
    expect(extra.ok).toBe(false);
  });

  it("refuses non-JSON, non-objects and oversized frames", () => {
    const notJson = parseMinerFrame("{nope");
    expect(!notJson.ok && notJson.error.code).toBe("frame_not_json");
    const arr = parseMinerFrame("[1]");
    expect(!arr.ok && arr.error.code).toBe("frame_invalid");
    const big = parseMinerFrame(" ".repeat(MAX_FRAME_BYTES + 1));
    expect(!big.ok && big.error.code).toBe("frame_too_large");
  });

  it("requires exactly one of output and chunks in a result", () => {
    const both = parseMinerFrame({ ...result("x"), chunks: 1 });
    expect(both.ok).toBe(false);
    const { output: _o, ...neither } = result("x");
    expect(parseMinerFrame(neither).ok).toBe(false);
    expect(parseMinerFrame({ ...neither, chunks: 2 }).ok).toBe(true);
    const large = parseMinerFrame(result("é".repeat(RESULT_INLINE_MAX_BYTES / 2 + 1)));
    expect(large.ok).toBe(false);
  });

  it("checks assign parameters against the generation bounds", () => {
    const bad = { ...assign, job: { ...assign.job, parameters: { ...assign.job.parameters, temperature: 5 } } };
    expect(parseCoordinatorFrame(bad).ok).toBe(false);
  });
});

describe("assembleResult", () => {
  it("accepts an inline result whose bytes and sha256 match, and refuses a wrong sha256", () => {
    const r = result("héllo");
    expect(assembleResult(r)).toMatchObject({ ok: true, output: "héllo" });
    expect(assembleResult({ ...r, sha256: "0".repeat(64) })).toEqual({ ok: false, reason: "sha256 does not match" });
    expect(assembleResult({ ...r, output_bytes: 5 })).toEqual({ ok: false, reason: "output_bytes does not match" });
  });

  it("joins chunks in seq order and names what is wrong with a bad set", () => {
    const text = "€".repeat(100_000);
    const frames = resultFrames(
      { job_id: "job_1", attempt: 1, lease_token: "tok" },
      { text, finish_reason: "length", usage: { prompt_tokens: 1, completion_tokens: 1 }, timing: { time_to_first_token_ms: 0, tokens_per_second: 0, total_ms: 0 }, token_ids: [] },
    );
    const chunks = frames.filter((f): f is ResultChunkFrame => f.type === "result_chunk");
    const final = frames.at(-1) as ResultFrame;
    expect(chunks.length).toBeGreaterThan(1);
    expect(assembleResult(final, [...chunks].reverse())).toMatchObject({ ok: true, output: text });
    expect(assembleResult(final, chunks.slice(1))).toEqual({ ok: false, reason: "chunk 0 missing" });
    expect(assembleResult(final, [...chunks, chunks[0]!])).toEqual({ ok: false, reason: "chunk 0 sent twice" });
    expect(assembleResult(final, chunks.map((c) => ({ ...c, attempt: 2 })))).toEqual({ ok: false, reason: "chunk of another attempt" });
  });
});
