import { createHash } from "node:crypto";
import { existsSync, readdirSync } from "node:fs";
import path from "node:path";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { WebSocket } from "ws";
import type { JobRecord } from "../../src/coordinator/store/job-store.js";
import {
  MAX_FRAME_BYTES,
  assembleResult,
  parseCoordinatorFrame,
  parseMinerFrame,
  type CoordinatorFrame,
  type HelloFrame,
} from "../../src/protocol/frames.js";
import { PROTOCOL_VERSION } from "../../src/protocol/version.js";
import { sleep, startApi, type ApiHarness } from "../coordinator/api-harness.js";
import { longString, numberLikeString, unicodeString, weirdNumber, weirdValue } from "./fuzz-arbitraries.js";
import { rawRequest } from "./raw-http.js";

/**
 * Property-based fuzzing of the miner gateway (/v1/miners/connect) with a real `ws` client and a
 * miner key: random JSON, frames of every known type with mutated fields, oversized, binary and
 * non-UTF-8 frames. Every invalid frame gets an error frame (three in a row close the
 * connection); valid frames for leases this miner does not hold are answered "stale" and change
 * no job; the coordinator keeps serving and a fresh hello still gets a welcome.
 */
let h: ApiHarness & { key: string };
let minerKey: string;
let wsUrl: string;
/** Jobs held by another miner (one assigned, one running) and one queued job no fuzz miner can run. */
let held: { jobId: string; attempt: number; leaseToken: string }[] = [];
let jobIds: string[] = [];
let before: JobRecord[] = [];
const tried: Record<string, number> = {};
/** How the random frames were classified (invalid by code, valid by type), for the summary. */
const classes = new Map<string, number>();
/** FUZZ_SCALE=10 for a deeper local run; FUZZ_SEED replays a reported seed. */
const SCALE = Number(process.env.FUZZ_SCALE ?? 1);
const SEED = Number(process.env.FUZZ_SEED ?? Date.now() % 1_000_000);

class FuzzMiner {
  readonly frames: CoordinatorFrame[] = [];
  closed: { code: number; reason: string } | undefined;
  private waiters: (() => void)[] = [];

  private constructor(readonly ws: WebSocket) {
    ws.on("message", (d: Buffer) => {
      const parsed = parseCoordinatorFrame(d);
      // Everything the coordinator sends must itself be a valid frame.
      if (!parsed.ok) throw new Error(`coordinator sent an invalid frame: ${d.toString().slice(0, 200)}`);
      this.frames.push(parsed.frame);
      this.wake();
    });
    ws.on("close", (code: number, reason: Buffer) => {
      this.closed = { code, reason: reason.toString() };
      this.wake();
    });
    ws.on("error", () => undefined);
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  static open(key: string): Promise<FuzzMiner> {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(wsUrl, { headers: { authorization: `Bearer ${key}` } });
      const m = new FuzzMiner(ws);
      ws.once("open", () => resolve(m));
      ws.once("unexpected-response", (_req, res) => reject(new Error(`upgrade refused: ${res.statusCode}`)));
      ws.once("error", reject);
    });
  }

  static async hello(name: string): Promise<FuzzMiner> {
    const m = await FuzzMiner.open(minerKey);
    const hello: HelloFrame = {
      type: "hello",
      protocol_version: PROTOCOL_VERSION,
      instance_id: "fuzz-instance",
      miner_name: name,
      version: "0.0.0-fuzz",
      gpus: [],
      models: ["fuzz-model-nobody-submits"],
      slots: 1,
      free_slots: 1,
      in_flight: [],
    };
    m.send(JSON.stringify(hello));
    const welcome = await m.next();
    expect(welcome.type).toBe("welcome");
    return m;
  }

  send(data: string | Buffer, binary = false): void {
    this.ws.send(data, { binary });
  }

  /** The next frame (or undefined when the connection closed first). */
  async next(timeoutMs = 10_000): Promise<CoordinatorFrame> {
    const deadline = Date.now() + timeoutMs;
    while (this.frames.length === 0) {
      if (this.closed !== undefined) throw new Error(`connection closed ${this.closed.code} ${this.closed.reason}`);
      if (Date.now() > deadline) throw new Error("no frame in time");
      await new Promise<void>((r) => {
        this.waiters.push(r);
        setTimeout(r, 200);
      });
    }
    return this.frames.shift()!;
  }

  async waitClosed(timeoutMs = 10_000): Promise<{ code: number; reason: string }> {
    const deadline = Date.now() + timeoutMs;
    while (this.closed === undefined) {
      if (Date.now() > deadline) throw new Error("connection not closed in time");
      await new Promise<void>((r) => {
        this.waiters.push(r);
        setTimeout(r, 200);
      });
    }
    return this.closed;
  }

  close(): void {
    this.ws.terminate();
  }
}

beforeAll(async () => {
  // A frame budget the fuzz stays within (its own describe block below tests the budget itself).
  h = await startApi({ "limits.requests_per_minute": 1_000_000, "limits.requests_per_hour": 1_000_000, "gateway.frame_rate": 10_000, "gateway.frame_burst": 10_000 });
  wsUrl = `${h.url.replace(/^http/, "ws")}/v1/miners/connect`;
  minerKey = (await h.newKey("acme", "miner")).key;
  const store = h.coordinator.store;
  for (const model of ["gpt2-held-a", "gpt2-held-b", "gpt2-queued"]) {
    const res = await h.call("POST", "/v1/jobs", { json: { model, input: "fuzz" } });
    expect(res.status).toBe(201);
    jobIds.push(((await res.json()) as { job_id: string }).job_id);
  }
  // Another miner holds two of them with long leases (10 min: the reaper leaves them alone).
  for (const [i, model] of ["gpt2-held-a", "gpt2-held-b"].entries()) {
    const a = await store.claimNextJob({ minerId: "miner_someone_else", gpus: [], models: [model] }, Date.now(), 600_000);
    expect(a?.job.id).toBe(jobIds[i]);
    held.push({ jobId: a!.job.id, attempt: a!.attempt, leaseToken: a!.leaseToken });
  }
  expect(await store.markRunning(held[1]!, Date.now(), 600_000)).toBe(true);
  before = await Promise.all(jobIds.map(async (id) => (await store.getJobById(id))!));
});

afterAll(async () => {
  await h.stop();
  held = [];
  jobIds = [];
});

const jobIdArb = fc.oneof(
  fc.constantFrom(0, 1, 2).map((i) => jobIds[i]!),
  fc.constantFrom("job_unknown1", "job_", "../../etc/passwd", "x".repeat(128)),
  unicodeString,
);
const leaseTokenArb = fc.oneof(fc.string({ minLength: 1, maxLength: 40 }), fc.uuid(), unicodeString);
const attemptArb = fc.oneof(fc.constantFrom(1, 1, 2), fc.integer({ min: 1, max: 2 ** 31 }));

function sha(s: string): string {
  return createHash("sha256").update(Buffer.from(s, "utf8")).digest("hex");
}

/** A frame of each type the miner may send, with plausible (mostly valid) field values. */
const baseFrame: fc.Arbitrary<Record<string, unknown>> = fc.oneof(
  fc.record({ type: fc.constant("pull"), free_slots: fc.integer({ min: 0, max: 4096 }) }),
  fc.record({ type: fc.constant("started"), job_id: jobIdArb, attempt: attemptArb, lease_token: leaseTokenArb }),
  fc.record({
    type: fc.constant("progress"),
    job_id: jobIdArb,
    attempt: attemptArb,
    lease_token: leaseTokenArb,
    tokens: fc.nat(),
    max_tokens: fc.nat(),
    tokens_per_s: fc.double({ min: 0, max: 1e6, noNaN: true }),
  }),
  fc.record({
    type: fc.constant("heartbeat"),
    in_flight: fc.array(fc.record({ job_id: jobIdArb, attempt: attemptArb, lease_token: leaseTokenArb, state: fc.constantFrom("running", "finished") }), { maxLength: 3 }),
    free_slots: fc.integer({ min: 0, max: 4096 }),
  }),
  fc.record({ type: fc.constant("result_chunk"), job_id: jobIdArb, attempt: attemptArb, lease_token: leaseTokenArb, seq: fc.integer({ min: 0, max: 255 }), data: fc.base64String({ maxLength: 64 }) }),
  fc.tuple(jobIdArb, attemptArb, leaseTokenArb, fc.oneof(fc.constantFrom("", "out"), unicodeString)).map(([job_id, attempt, lease_token, output]) => ({
    type: "result",
    job_id,
    attempt,
    lease_token,
    output,
    output_bytes: Buffer.byteLength(output),
    sha256: sha(output),
    finish_reason: "length",
    usage: { prompt_tokens: 1, completion_tokens: 2 },
    timing: { time_to_first_token_ms: 1, tokens_per_second: 2, total_ms: 3 },
  })),
  fc.record({
    type: fc.constant("fail"),
    job_id: jobIdArb,
    attempt: attemptArb,
    lease_token: leaseTokenArb,
    code: fc.constantFrom("engine_error", "cancelled", "timed_out"),
    message: fc.oneof(fc.constant("boom"), unicodeString),
    retryable: fc.boolean(),
  }),
  fc.record({ type: fc.constant("released"), job_id: jobIdArb, attempt: attemptArb, lease_token: leaseTokenArb, reason: fc.constantFrom("draining", "shutdown", "no_free_slot") }),
  fc.record({ type: fc.constant("error"), code: fc.constantFrom("x", "engine_error"), message: unicodeString, fatal: fc.boolean() }),
  fc.record({
    type: fc.constant("hello"),
    protocol_version: fc.constantFrom(PROTOCOL_VERSION, 0, 99),
    instance_id: fc.constantFrom("fuzz-instance", "other-instance"),
    miner_name: fc.oneof(fc.constant("again"), unicodeString),
    version: fc.constant("1"),
    gpus: fc.constant([]),
    models: fc.constant([]),
    slots: fc.constant(1),
    free_slots: fc.constant(1),
    in_flight: fc.constant([]),
  }),
);

const fieldName = fc.constantFrom("type", "job_id", "attempt", "lease_token", "output", "chunks", "sha256", "output_bytes", "free_slots", "in_flight", "seq", "data", "code", "extra", "__proto__");
const mutatedFrame = fc
  .tuple(baseFrame, fc.array(fc.tuple(fieldName, fc.oneof(weirdValue, weirdNumber, numberLikeString, fc.constant(undefined))), { maxLength: 2 }))
  .map(([f, muts]) => {
    const out: Record<string, unknown> = { ...f };
    for (const [k, v] of muts) Object.defineProperty(out, k, { value: v, enumerable: true, configurable: true, writable: true });
    return JSON.stringify(out);
  });

/** Text sent as one WebSocket text frame. */
const frameText = fc.oneof(
  { weight: 5, arbitrary: mutatedFrame },
  { weight: 2, arbitrary: baseFrame.map((f) => JSON.stringify(f)) },
  { weight: 1, arbitrary: fc.jsonValue({ maxDepth: 3 }).map((v) => JSON.stringify(v)) },
  { weight: 1, arbitrary: fc.oneof(fc.string({ maxLength: 60 }), unicodeString, longString, fc.constantFrom("", "{", "null", '{"type":', "[]", '{"type":"pull","free_slots":1}x')) },
  {
    weight: 1,
    arbitrary: fc.oneof(fc.constantFrom("welcome", "assign", "ack", "cancel", "drain", "HELLO", "", "__proto__", "toString", "constructor"), unicodeString).map((type) =>
      JSON.stringify({ type, job_id: "job_x" }),
    ),
  },
);

const HEARTBEAT = JSON.stringify({ type: "heartbeat", in_flight: [], free_slots: 0 });

/** Resolves once a frame matching `match` arrived, or the connection closed (then the caller's checks decide). */
async function waitForFrame(frames: CoordinatorFrame[], match: (f: CoordinatorFrame) => boolean, closed: Promise<number>): Promise<void> {
  let done = false;
  void closed.then(() => (done = true));
  while (!done && !frames.some(match)) await sleep(10);
}
const SYNC = JSON.stringify({ type: "fuzz_sync" });

function count(name: string): void {
  tried[name] = (tried[name] ?? 0) + 1;
}

describe("miner gateway under fuzzed frames", { timeout: 60_000 * SCALE }, () => {
  it("every invalid frame gets an error frame; valid frames for leases it does not hold are stale; no job changes", async () => {
    const m = await FuzzMiner.hello("fuzz-a");
    const chunkKeys = new Set<string>();
    await fc.assert(
      fc.asyncProperty(frameText, async (text) => {
        count("random and mutated frames");
        m.send(text);
        const parsed = parseMinerFrame(text);
        const kind = parsed.ok ? `valid ${parsed.frame.type}` : parsed.error.code;
        classes.set(kind, (classes.get(kind) ?? 0) + 1);
        if (!parsed.ok) {
          const err = await m.next();
          expect(err, text.slice(0, 200)).toMatchObject({ type: "error", code: parsed.error.code, fatal: false });
        } else {
          const f = parsed.frame;
          if (f.type === "hello") {
            expect(await m.next()).toMatchObject({ type: "error", code: "frame_invalid", fatal: false });
          } else if (f.type === "result" || f.type === "fail" || f.type === "released") {
            // Cancels (lease_lost) for earlier frames may come first; the ack is for this frame.
            let ack = await m.next();
            while (ack.type === "cancel") ack = await m.next();
            expect(ack, text.slice(0, 200)).toMatchObject({ type: "ack", job_id: f.job_id, attempt: f.attempt, of: f.type });
            const status = (ack as { status: string }).status;
            const clean = f.type !== "result" || (assembleResult(f).ok && !chunkKeys.has(`${f.job_id}:${f.attempt}`));
            if (clean) expect(status).toBe("stale");
            else expect(["stale", "invalid"]).toContain(status);
            if (f.type === "result") chunkKeys.delete(`${f.job_id}:${f.attempt}`);
          } else {
            if (f.type === "result_chunk") chunkKeys.add(`${f.job_id}:${f.attempt}`);
            // No answer expected: a sync frame (unknown type) proves it was handled; only cancels may come before it.
            m.send(SYNC);
            let reply = await m.next();
            while (reply.type === "cancel") reply = await m.next();
            expect(reply, text.slice(0, 200)).toMatchObject({ type: "error", code: "frame_unknown_type", fatal: false });
          }
        }
        // A valid frame resets the bad-frame count, so the connection stays open for the next input.
        m.send(HEARTBEAT);
        expect(m.closed).toBeUndefined();
        expect(m.frames.filter((x) => x.type !== "cancel")).toEqual([]);
        m.frames.length = 0;
      }),
      { numRuns: 300 * SCALE, seed: SEED },
    );
    m.close();
  });

  it("three invalid frames in a row close the connection with a fatal error", async () => {
    const invalid = frameText.filter((t) => !parseMinerFrame(t).ok);
    await fc.assert(
      fc.asyncProperty(fc.array(invalid, { minLength: 3, maxLength: 3 }), async (texts) => {
        count("three invalid frames in a row");
        const m = await FuzzMiner.hello(`fuzz-burst`);
        for (const t of texts) m.send(t);
        expect(await m.next()).toMatchObject({ type: "error", fatal: false });
        expect(await m.next()).toMatchObject({ type: "error", fatal: false });
        expect(await m.next()).toMatchObject({ type: "error", fatal: true });
        expect((await m.waitClosed()).code).toBe(1008);
      }),
      { numRuns: 20 * SCALE, seed: SEED },
    );
  });

  it("results, fails and releases for jobs another miner holds are stale and change nothing, even with the right lease token", async () => {
    const m = await FuzzMiner.hello("fuzz-thief");
    const target = fc.constantFrom(0, 1);
    const kind = fc.constantFrom("result", "fail", "released");
    // null: the holder's own token, as if it had leaked to this miner.
    const token = fc.oneof(leaseTokenArb, fc.constant(null));
    await fc.assert(
      fc.asyncProperty(target, kind, token, fc.constantFrom(0, 1), async (i, type, guess, attemptDelta) => {
        const lease = held[i]!;
        count(guess === null ? "leaked-token result/fail/released" : "unauthorised result/fail/released");
        const base = { job_id: lease.jobId, attempt: lease.attempt + attemptDelta, lease_token: guess ?? lease.leaseToken };
        const output = "stolen";
        const frame =
          type === "result"
            ? { type, ...base, output, output_bytes: 6, sha256: sha(output), finish_reason: "eos", usage: { prompt_tokens: 1, completion_tokens: 1 }, timing: { time_to_first_token_ms: 1, tokens_per_second: 1, total_ms: 1 } }
            : type === "fail"
              ? { type, ...base, code: "engine_error", message: "no", retryable: false }
              : { type, ...base, reason: "draining" };
        m.send(JSON.stringify(frame));
        expect(await m.next()).toMatchObject({ type: "ack", job_id: lease.jobId, of: type, status: "stale" });
      }),
      { numRuns: 60 * SCALE, seed: SEED },
    );
    m.close();
  });

  it("oversized, binary and non-UTF-8 frames: an error or a close, never a crash", async () => {
    const m = await FuzzMiner.hello("fuzz-binary");
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ maxLength: 256 }), async (bytes) => {
        count("binary frames");
        m.send(Buffer.from(bytes), true);
        expect(await m.next()).toMatchObject({ type: "error", code: "frame_invalid", fatal: false });
        m.send(HEARTBEAT);
      }),
      { numRuns: 50 * SCALE, seed: SEED },
    );
    m.close();

    // Over MAX_FRAME_BYTES: ws refuses it (1009, message too big) and drops the connection.
    const big = await FuzzMiner.hello("fuzz-big");
    big.send(JSON.stringify({ type: "pull", free_slots: 1, pad: "x".repeat(MAX_FRAME_BYTES) }));
    count("oversized frame");
    expect((await big.waitClosed()).code).toBe(1009);

    // Invalid UTF-8 in a text frame: closed with 1007 (invalid frame payload data).
    for (const bytes of [[0xff], [0xc3, 0x28], [0xed, 0xa0, 0x80], [0x7b, 0xf4, 0x90, 0x80, 0x80, 0x7d]]) {
      const bad = await FuzzMiner.hello("fuzz-utf8");
      bad.send(Buffer.from(bytes), false);
      count("non-UTF-8 text frames");
      expect((await bad.waitClosed()).code).toBe(1007);
    }
  });

  it("the frame budget: a burst within frame_burst passes; past it an error frame rate_limited, then a close", async () => {
    const BURST = 20;
    // No cool-down: each run connects again at once with the same key (the cool-down has its own test).
    const budgeted = await startApi({ "gateway.frame_rate": 1, "gateway.frame_burst": BURST, "gateway.rate_limit_cooldown": "0s" });
    const url = `${budgeted.url.replace(/^http/, "ws")}/v1/miners/connect`;
    const key = (await budgeted.newKey("acme", "miner")).key;
    try {
      await fc.assert(
        fc.asyncProperty(fc.integer({ min: 1, max: 3 * BURST }), frameText.filter((t) => Buffer.byteLength(t) < 64 * 1024), async (n, text) => {
          count("frame-budget bursts");
          const ws = new WebSocket(url, { headers: { authorization: `Bearer ${key}` } });
          const frames: CoordinatorFrame[] = [];
          const closed = new Promise<number>((resolve) => ws.on("close", (code: number) => resolve(code)));
          ws.on("message", (d: Buffer) => frames.push(JSON.parse(d.toString()) as CoordinatorFrame));
          await new Promise((resolve, reject) => {
            ws.once("open", resolve);
            ws.once("error", reject);
          });
          // The hello is the first frame of the burst; random frames (valid or not) fill it up.
          ws.send(JSON.stringify({ type: "hello", protocol_version: PROTOCOL_VERSION, instance_id: "fuzz-instance", miner_name: "budget", version: "1", gpus: [], models: [], slots: 1, free_slots: 1, in_flight: [] }));
          for (let i = 1; i < n; i++) ws.send(i % 2 === 0 ? HEARTBEAT : text);
          if (n < BURST) {
            // Within the burst (the sync frame included): answered, never closed for the rate (a random frame may still be invalid, three in a row close 1008).
            ws.send(SYNC);
            await waitForFrame(frames, (f) => f.type === "error" && f.code === "frame_unknown_type", closed);
            expect(frames.some((f) => f.type === "error" && f.code === "rate_limited")).toBe(false);
          } else if (n > BURST + 2) {
            const code = await closed;
            expect(frames.some((f) => f.type === "error" && f.code === "rate_limited" && f.fatal)).toBe(true);
            expect(code).toBe(1008);
          }
          ws.terminate();
        }),
        { numRuns: 30 * SCALE, seed: SEED },
      );
      expect((await rawRequest(budgeted.url, "GET", "/healthz")).status).toBe(200);
    } finally {
      await budgeted.stop();
    }
  });

  it("afterwards: the coordinator serves, a fresh hello gets a welcome, no job changed and no result file was left", async () => {
    expect((await rawRequest(h.url, "GET", "/healthz")).status).toBe(200);
    const fresh = await FuzzMiner.hello("fuzz-after");
    fresh.close();
    // Frames of the closed fuzz connections are all handled by now; give the queue a moment anyway.
    await sleep(50);
    const after = await Promise.all(jobIds.map(async (id) => (await h.coordinator.store.getJobById(id))!));
    expect(after).toEqual(before);
    const resultsDir = path.join(h.dir, "results");
    const leftovers = existsSync(resultsDir) ? readdirSync(resultsDir, { recursive: true }).filter((f) => String(f).endsWith(".txt")) : [];
    expect(leftovers).toEqual([]);
    const total = Object.values(tried).reduce((a, b) => a + b, 0);
    console.log(`ws-fuzz (seed ${SEED}): ${total} frames/connections; ${Object.entries(tried).map(([k, n]) => `${k}: ${n}`).join("; ")}; random frames by class: ${[...classes.entries()].sort().map(([k, n]) => `${k} ${n}`).join(", ")}; coordinator up, jobs unchanged`);
  });
});
