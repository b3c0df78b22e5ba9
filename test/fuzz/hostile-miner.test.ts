import { execFile } from "node:child_process";
import { connect } from "node:net";
import { createHash } from "node:crypto";
import { promisify } from "node:util";
import { afterEach, describe, expect, it } from "vitest";
import type { AckFrame, AssignFrame, CoordinatorFrame, ErrorFrame, MinerFrame, WelcomeFrame } from "../../src/protocol/frames.js";
import { RESULT_CHUNK_BYTES } from "../../src/protocol/frames.js";
import { OLDEST_PROTOCOL_VERSION, PROTOCOL_VERSION } from "../../src/protocol/version.js";
import { expectProblem, startApi, uniqueModel, type ApiHarness } from "../coordinator/api-harness.js";
import { CLI, ROOT, waitFor } from "../e2e/cluster.js";
import { RawMiner, helloFrame, isAck, resultFrame } from "../e2e/raw-miner.js";

/**
 * One hostile miner key (or client key) against a real coordinator (port 0, a real SQLite file,
 * real WebSockets): each case is an attack that worked before the hardening of issue 13 — it
 * must now be bounded, refused or ignored, and the coordinator must keep serving.
 */
let h: (ApiHarness & { key: string }) | undefined;

afterEach(async () => {
  await h?.stop();
  h = undefined;
});

async function start(overrides: Record<string, unknown> = {}): Promise<ApiHarness & { key: string; wsUrl: string; minerKey: string; minerKeyId: string }> {
  const harness = await startApi({ "limits.requests_per_minute": 1_000_000, "limits.requests_per_hour": 1_000_000, ...overrides });
  h = harness;
  const mk = await harness.newKey("acme", "miner");
  return { ...harness, wsUrl: `${harness.url.replace(/^http/, "ws")}/v1/miners/connect`, minerKey: mk.key, minerKeyId: mk.id };
}

async function submitJob(hh: ApiHarness, body: Record<string, unknown>, key?: string): Promise<string> {
  const res = await hh.call("POST", "/v1/jobs", { json: { input: "hostile", ...body }, ...(key === undefined ? {} : { key }) });
  expect(res.status, await res.clone().text()).toBe(201);
  return ((await res.json()) as { job_id: string }).job_id;
}

async function job(hh: ApiHarness, id: string): Promise<Record<string, unknown>> {
  const res = await hh.call("GET", `/v1/jobs/${id}`);
  expect(res.status).toBe(200);
  return (await res.json()) as Record<string, unknown>;
}

/**
 * Whether a miner of protocol `v` accepts this welcome. Its schema is strict: protocol 4 (the
 * oldest accepted) knows `replica` and `protocol_version` (the speaking version), and protocol 5
 * changed only the hello, so both get the same fields.
 */
function parseCoordinatorFrameAs(v: number, welcome: WelcomeFrame): boolean {
  const known = new Set(["type", "miner_id", "heartbeat_ms", "lease_ttl_ms", "resumed", "refused", "replica", "protocol_version"]);
  const onlyKnown = Object.keys(welcome).every((k) => known.has(k));
  return v >= 4 && onlyKnown && typeof welcome.replica === "string" && welcome.protocol_version === Math.min(v, PROTOCOL_VERSION);
}

/** The result frame for (a) with these fields changed (chunked results, odd figures). */
function resultWith(a: AssignFrame, output: string, over: Record<string, unknown>): Record<string, unknown> {
  return { ...(resultFrame(a, output) as unknown as Record<string, unknown>), ...over };
}

/** An unknown frame type is answered with an error frame after everything sent before it was handled. */
async function sync(m: RawMiner): Promise<void> {
  m.send({ type: "sync_probe" });
  await m.next<ErrorFrame>((f) => f.type === "error" && f.code === "frame_unknown_type");
}

/** A miner that holds the lease of a fresh job (assigned, then started). */
async function holdingMiner(
  hh: Awaited<ReturnType<typeof start>>,
  name: string,
  jobBody: Record<string, unknown> = {},
): Promise<{ m: RawMiner; a: AssignFrame; id: string; model: string }> {
  const model = uniqueModel();
  const { m } = await minerWith(hh, name, { models: [model] });
  const id = await submitJob(hh, { model, ...jobBody });
  m.send({ type: "pull", free_slots: 1 });
  const a = await m.next<AssignFrame>((f) => f.type === "assign" && f.job.job_id === id);
  m.send({ type: "started", job_id: id, attempt: a.attempt, lease_token: a.lease_token });
  await waitFor("running", () => job(hh, id), (j) => j.status === "running");
  return { m, a, id, model };
}

async function minerWith(hh: Awaited<ReturnType<typeof start>>, name: string, over: Partial<ReturnType<typeof helloFrame>>): Promise<{ m: RawMiner; welcome: WelcomeFrame }> {
  const m = await RawMiner.open(hh.wsUrl, hh.minerKey);
  m.send({ ...helloFrame(name), ...over });
  const welcome = await m.next<WelcomeFrame>((f) => f.type === "welcome");
  return { m, welcome };
}

describe("hostile miner: GPU names (1)", () => {
  it("a GPU name of 60 short words and a gpu_type of 12 that cannot all occur: submit, status, claim and health answer at once", async () => {
    const hh = await start();
    const model = uniqueModel();
    const { m } = await minerWith(hh, "many-words", {
      models: [model],
      gpus: [{ index: 0, name: Array(60).fill("a").join(" "), vram_total_mb: 16000, vram_free_mb: 16000 }],
    });
    const id = await submitJob(hh, { model, requirements: { gpu_type: `${Array(12).fill("a").join(" ")} b` } });
    expect(await job(hh, id)).toMatchObject({ status: "queued", eligible_miners: 0 });
    m.send({ type: "pull", free_slots: 1 });
    await sync(m);
    expect(m.frames.filter((f) => f.type === "assign")).toEqual([]);
    expect((await hh.call("GET", "/healthz")).status).toBe(200);
    m.close();
  });
});

describe("hostile miner: floods of progress and heartbeats (2)", () => {
  it("thousands of progress frames and a heartbeat naming one lease thousands of times make no store write before a renewal is due", async () => {
    const hh = await start({ "gateway.frame_rate": 100_000, "gateway.frame_burst": 100_000 });
    const { m, a, id } = await holdingMiner(hh, "flooder", { parameters: { max_new_tokens: 100 } });
    const store = hh.coordinator.store;
    let writes = 0;
    for (const verb of ["renewLease", "markRunning", "failAttempt", "commitResult", "releaseLease"] as const) {
      const orig = store[verb].bind(store) as (...args: unknown[]) => Promise<unknown>;
      (store as unknown as Record<string, unknown>)[verb] = (...args: unknown[]) => {
        writes++;
        return orig(...args);
      };
    }
    const lease = { job_id: id, attempt: a.attempt, lease_token: a.lease_token };
    for (let i = 1; i <= 3000; i++) m.send({ type: "progress", ...lease, tokens: i % 100, max_tokens: 100, tokens_per_s: 50 });
    m.send({ type: "heartbeat", in_flight: Array(4000).fill({ ...lease, state: "running" }), free_slots: 0 });
    // The same lease again under started: counted once, already running.
    for (let i = 0; i < 500; i++) m.send({ type: "started", ...lease });
    m.send({ type: "progress", ...lease, tokens: 1_000_000, max_tokens: 7, tokens_per_s: 1e12 });
    await sync(m);
    // Before the hardening each of these 7,500 frames was a write transaction (one fsync'd renewal each).
    expect(writes).toBe(0);
    // Live progress is served from memory, clamped to the job's max_new_tokens (below 100 until the result).
    expect(await job(hh, id)).toMatchObject({ status: "running", progress: 99 });
    expect(m.closed).toBeUndefined();
    m.close();
  });

  it("past the frame budget a connection gets an error frame rate_limited and is closed, and its key cools down; other keys are unaffected", async () => {
    const hh = await start({ "gateway.frame_rate": 5, "gateway.frame_burst": 20, "gateway.rate_limit_cooldown": "1h" });
    const calmKey = await hh.newKey("acme", "miner");
    const calm = await RawMiner.open(hh.wsUrl, calmKey.key);
    calm.send(helloFrame("calm"));
    await calm.next<WelcomeFrame>((f) => f.type === "welcome");
    const { m: noisy } = await minerWith(hh, "noisy", {});
    for (let i = 0; i < 200; i++) noisy.send({ type: "heartbeat", in_flight: [], free_slots: 0 });
    expect(await noisy.next<ErrorFrame>((f) => f.type === "error")).toMatchObject({ code: "rate_limited", fatal: true });
    expect((await noisy.waitClosed()).code).toBe(1008);
    // Reconnecting does not buy a fresh budget: the key is refused at the upgrade while it cools down.
    await expect(RawMiner.open(hh.wsUrl, hh.minerKey)).rejects.toThrow(/429/);
    await sync(calm);
    expect(calm.closed).toBeUndefined();
    calm.close();
  });

  it("the byte budget closes a connection that sends large frames, however few", async () => {
    const hh = await start({ "gateway.byte_rate": "1KiB", "gateway.byte_burst": "2MiB" });
    const { m } = await minerWith(hh, "heavy", {});
    const entry = { job_id: "job_nosuchjob", attempt: 1, lease_token: "x", state: "running" };
    // About 440 KB each: five of them are over the 2 MiB burst.
    for (let i = 0; i < 8; i++) m.send({ type: "heartbeat", in_flight: Array(4000).fill(entry), free_slots: 0 });
    expect(await m.next<ErrorFrame>((f) => f.type === "error" && f.code === "rate_limited")).toMatchObject({ fatal: true });
    expect((await m.waitClosed()).code).toBe(1008);
  });
});

describe("hostile keys: revocation reaches open connections (3)", () => {
  it("after `aitbc keys revoke`, the miner's socket closes and its lease is requeued at once; a client's event stream ends", async () => {
    const hh = await start({ "scheduler.lease_ttl": "10m" });
    const { m, id } = await holdingMiner(hh, "to-revoke");
    const client = await hh.newKey("acme");
    const queued = await submitJob(hh, { model: uniqueModel() }, client.key);
    const stream = await fetch(`${hh.url}/v1/jobs/${queued}/events`, { headers: { authorization: `Bearer ${client.key}` } });
    expect(stream.status).toBe(200);
    const streamEnded = stream.text();

    const t0 = Date.now();
    await promisify(execFile)(process.execPath, [CLI, "keys", "revoke", hh.minerKeyId, "--data-dir", hh.dir], { cwd: ROOT });
    await promisify(execFile)(process.execPath, [CLI, "keys", "revoke", client.id, "--data-dir", hh.dir], { cwd: ROOT });
    const closed = await m.waitClosed();
    const closedMs = Date.now() - t0;
    expect(m.frames.find((f) => f.type === "error")).toMatchObject({ code: "key_revoked", fatal: true });
    expect(closed.code).toBe(1008);
    // Requeued without waiting out the 10-minute lease, and not counted as a failure.
    const requeued = await waitFor("requeued", () => hh.coordinator.store.getJobById(id), (j) => j?.status === "queued");
    expect(requeued).toMatchObject({ status: "queued", failures: 0, minerId: null });
    const events = await hh.coordinator.store.listEvents(id, 0);
    expect(events.at(-1)).toMatchObject({ type: "requeued", data: { reason: "key_revoked" } });
    expect(await streamEnded).toContain("event: snapshot");
    const streamMs = Date.now() - t0;
    await expectProblem(await hh.call("GET", `/v1/jobs/${queued}`, { key: client.key }), 401, "unauthorized");
    console.log(`revocation (revocation_check 1s): miner socket closed ${closedMs} ms and the client stream ended ${streamMs} ms after the revoke began`);
  });
});

describe("hostile miner: fail codes the coordinator decides (4)", () => {
  it("fail {cancelled} without a cancel and fail {timed_out} before the deadline are ordinary failures", async () => {
    const hh = await start();
    const c = await holdingMiner(hh, "liar-c");
    c.m.send({ type: "fail", job_id: c.id, attempt: c.a.attempt, lease_token: c.a.lease_token, code: "cancelled", message: "nobody asked", retryable: true });
    expect(await c.m.next<AckFrame>(isAck(c.id, c.a.attempt))).toMatchObject({ of: "fail", status: "committed" });
    expect(await job(hh, c.id)).toMatchObject({ status: "queued", cancel_requested: false });
    const t = await holdingMiner(hh, "liar-t", { timeout_seconds: 3600 });
    t.m.send({ type: "fail", job_id: t.id, attempt: t.a.attempt, lease_token: t.a.lease_token, code: "timed_out", message: "soon", retryable: false });
    expect(await t.m.next<AckFrame>(isAck(t.id, t.a.attempt))).toMatchObject({ of: "fail", status: "committed" });
    expect(await job(hh, t.id)).toMatchObject({ status: "failed", error: { code: "miner_claimed_timed_out" } });
    c.m.close();
    t.m.close();
  });
});

describe("hostile miner: codes and text (5)", () => {
  it("codes with control characters are invalid frames; protocol versions current and previous are welcomed, others refused", async () => {
    const hh = await start();
    const c = await holdingMiner(hh, "escapes");
    c.m.send({ type: "fail", job_id: c.id, attempt: c.a.attempt, lease_token: c.a.lease_token, code: "\u001b[2J\u001b[31mgotcha", message: "x", retryable: false });
    expect(await c.m.next<ErrorFrame>((f) => f.type === "error")).toMatchObject({ code: "frame_invalid", fatal: false });
    expect(await job(hh, c.id)).toMatchObject({ status: "running" });
    c.m.close();
    expect(OLDEST_PROTOCOL_VERSION).toBe(4);
    for (const v of [OLDEST_PROTOCOL_VERSION, PROTOCOL_VERSION]) {
      // A protocol 4 miner sends no instance_id (protocol 5 added it).
      const { welcome } = await minerWith(hh, `v${v}`, { protocol_version: v, ...(v < 5 ? { instance_id: undefined } : {}) });
      expect(welcome.type).toBe("welcome");
      // A previous-version miner parses strictly: its welcome has only the fields it knows.
      expect(parseCoordinatorFrameAs(v, welcome)).toBe(true);
    }
    for (const v of [OLDEST_PROTOCOL_VERSION - 1, PROTOCOL_VERSION + 1, 99]) {
      const m = await RawMiner.open(hh.wsUrl, hh.minerKey);
      m.send({ ...helloFrame(`v${v}`), protocol_version: v });
      expect(await m.next<ErrorFrame>((f) => f.type === "error")).toMatchObject({ code: "protocol_version", fatal: true });
    }
  });
});

describe("hostile miner: buffered result chunks (6)", () => {
  const chunk = (a: AssignFrame, seq: number, fill: number): MinerFrame => ({
    type: "result_chunk",
    job_id: a.job.job_id,
    attempt: a.attempt,
    lease_token: a.lease_token,
    seq,
    data: Buffer.alloc(RESULT_CHUNK_BYTES, fill).toString("base64"),
  });

  it("past the per-connection cap the result is refused (error frame, then ack invalid) and the lease stays; a resend inline commits", async () => {
    const hh = await start({ "gateway.max_buffered_result_bytes_per_connection": "1MiB", "gateway.max_buffered_result_bytes": "8MiB" });
    const { m, a, id } = await holdingMiner(hh, "hoarder");
    for (let seq = 0; seq < 40; seq++) m.send(chunk(a, seq, 0x61));
    expect(await m.next<ErrorFrame>((f) => f.type === "error")).toMatchObject({ code: "result_buffer_full", fatal: false });
    await sync(m);
    expect(hh.coordinator.gateway.bufferedResultBytes).toBeLessThanOrEqual(1024 * 1024);
    const bytes = 40 * RESULT_CHUNK_BYTES;
    m.send(resultWith(a, "x", { output: undefined, chunks: 40, output_bytes: bytes, sha256: createHash("sha256").update(Buffer.alloc(bytes, 0x61)).digest("hex") }));
    expect(await m.next<AckFrame>(isAck(id, a.attempt))).toMatchObject({ status: "invalid" });
    expect(hh.coordinator.gateway.bufferedResultBytes).toBe(0);
    expect(await job(hh, id)).toMatchObject({ status: "running", attempt: a.attempt });
    m.send(resultFrame(a, "a small honest result"));
    expect(await m.next<AckFrame>(isAck(id, a.attempt))).toMatchObject({ status: "committed" });
    m.close();
  });

  it("connections under their own cap together hit the total cap: one result is refused, memory stays bounded", async () => {
    const hh = await start({ "gateway.max_buffered_result_bytes_per_connection": "2MiB", "gateway.max_buffered_result_bytes": "3MiB" });
    const x = await holdingMiner(hh, "hoarder-x");
    const y = await holdingMiner(hh, "hoarder-y");
    for (let seq = 0; seq < 10; seq++) x.m.send(chunk(x.a, seq, 0x62)); // 1.875 MiB
    await sync(x.m);
    for (let seq = 0; seq < 10; seq++) y.m.send(chunk(y.a, seq, 0x63));
    expect(await y.m.next<ErrorFrame>((f) => f.type === "error")).toMatchObject({ code: "result_buffer_full" });
    await sync(y.m);
    expect(hh.coordinator.gateway.bufferedResultBytes).toBeLessThanOrEqual(3 * 1024 * 1024);
    x.m.close();
    y.m.close();
  });
});

describe("hostile miner: slots (7)", () => {
  it("a one-slot miner that pulls free_slots 4096 gets one job, not the queue", async () => {
    const hh = await start();
    const model = uniqueModel();
    const { m } = await minerWith(hh, "greedy", { models: [model], slots: 1 });
    for (let i = 0; i < 5; i++) await submitJob(hh, { model });
    m.send({ type: "pull", free_slots: 4096 });
    await m.next<AssignFrame>((f) => f.type === "assign");
    await sync(m);
    m.send({ type: "pull", free_slots: 4096 });
    await sync(m);
    expect(m.frames.filter((f: CoordinatorFrame) => f.type === "assign")).toEqual([]);
    expect(await hh.coordinator.store.countQueued({ model })).toBe(4);
    m.close();
  });

  it("a hello's slots and VRAM are clamped to plausible bounds; a reported speed is clamped before clients see it", async () => {
    const hh = await start({ "gateway.max_slots": 8 });
    const model = uniqueModel();
    const { m } = await minerWith(hh, "boaster", { models: [model], slots: 4096, gpus: [{ index: 0, name: "NVIDIA H200", vram_total_mb: 1e9, vram_free_mb: 1e9 }] });
    const s = hh.coordinator.gateway.miners().find((x) => x.name === "boaster")!;
    expect(s.slots).toBe(8);
    expect(s.gpus[0]!.vram_total_mb).toBe(1024 * 1024);
    // 2,000 GB of VRAM no real GPU has: not eligible, whatever the hello said.
    const id = await submitJob(hh, { model, requirements: { min_vram_gb: 2000 } });
    expect(await job(hh, id)).toMatchObject({ eligible_miners: 0 });
    m.close();
    const c = await holdingMiner(hh, "speedster");
    c.m.send(resultWith(c.a, "fast", { timing: { time_to_first_token_ms: 0, tokens_per_second: 1e12, total_ms: 0 } }));
    expect(await c.m.next<AckFrame>(isAck(c.id, c.a.attempt))).toMatchObject({ status: "committed" });
    expect(((await job(hh, c.id)).result as { tokens_per_second: number }).tokens_per_second).toBe(100_000);
    c.m.close();
  });
});

describe("hostile miner: checksums that match the bytes (8)", () => {
  it("invalid UTF-8 in chunks and a lone surrogate inline are refused; the status and the download name what each checksum covers", async () => {
    const hh = await start();
    const c = await holdingMiner(hh, "bytes", { output_config: { format: "text" } });
    const bad = Buffer.from([0x61, 0xff, 0xfe, 0x62]);
    c.m.send({ type: "result_chunk", job_id: c.id, attempt: c.a.attempt, lease_token: c.a.lease_token, seq: 0, data: bad.toString("base64") });
    c.m.send(resultWith(c.a, "x", { output: undefined, chunks: 1, output_bytes: bad.length, sha256: createHash("sha256").update(bad).digest("hex") }));
    expect(await c.m.next<AckFrame>(isAck(c.id, c.a.attempt))).toMatchObject({ status: "invalid", message: expect.stringContaining("UTF-8") as unknown });
    const lone = "half \ud800 a pair";
    c.m.send(resultWith(c.a, lone, { sha256: createHash("sha256").update(lone).digest("hex") }));
    expect(await c.m.next<AckFrame>(isAck(c.id, c.a.attempt))).toMatchObject({ status: "invalid" });
    const text = "naïve café ☕ 🚀";
    c.m.send(resultFrame(c.a, text));
    expect(await c.m.next<AckFrame>(isAck(c.id, c.a.attempt))).toMatchObject({ status: "committed" });
    const outputSha = createHash("sha256").update(text).digest("hex");
    expect((await job(hh, c.id)).result).toMatchObject({ output_sha256: outputSha, output_bytes: Buffer.byteLength(text), available: true });
    const dl = await hh.call("GET", `/v1/jobs/${c.id}/download`);
    const body = Buffer.from(await dl.arrayBuffer());
    expect(body.toString("utf8")).toBe(text);
    expect(dl.headers.get("etag")).toBe(`"${outputSha}"`);
    expect(dl.headers.get("digest")).toBe(`sha-256=${createHash("sha256").update(body).digest("base64")}`);
    c.m.close();

    // JSON: the document's own checksum is in its headers; output_sha256 inside is the text's.
    const j = await holdingMiner(hh, "json");
    j.m.send(resultFrame(j.a, text));
    await j.m.next<AckFrame>(isAck(j.id, j.a.attempt));
    const doc = await hh.call("GET", `/v1/jobs/${j.id}/download`);
    const docBytes = Buffer.from(await doc.arrayBuffer());
    expect(doc.headers.get("etag")).toBe(`"${createHash("sha256").update(docBytes).digest("hex")}"`);
    expect(JSON.parse(docBytes.toString("utf8"))).toMatchObject({ output: text, output_sha256: outputSha, output_bytes: Buffer.byteLength(text) });
    j.m.close();

    // An uploaded file with a BOM: size and hash of the bytes as uploaded, both.
    const raw = Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from("prompt ✓")]);
    const up = await hh.call("POST", "/v1/files", { body: raw, headers: { "content-type": "text/plain" } });
    expect(await up.json()).toMatchObject({ bytes: raw.length, sha256: createHash("sha256").update(raw).digest("hex") });
  });
});

describe("hostile client: numbers (9)", () => {
  it("integer query parameters accept integer text only", async () => {
    const hh = await start();
    for (const v of ["1e3", "1.9", "0x10", " 7", "7 ", "", "+-1"]) {
      await expectProblem(await hh.call("GET", `/v1/jobs?limit=${encodeURIComponent(v)}`), 422, "validation_failed");
    }
    expect((await hh.call("GET", "/v1/jobs?limit=3")).status).toBe(200);
    expect((await hh.call("GET", "/v1/jobs/history?from=2026-01-01&to=2026-01-02&limit=2.5")).status).toBe(422);
  });
});

describe("connection limits", () => {
  it("WebSockets per miner key and in total, and event streams per client key, are capped with a problem", async () => {
    const hh = await start({ "gateway.max_connections_per_key": 2, "gateway.max_connections": 3, "limits.max_streams_per_key": 2 });
    const a = await RawMiner.open(hh.wsUrl, hh.minerKey);
    const b = await RawMiner.open(hh.wsUrl, hh.minerKey);
    await expect(RawMiner.open(hh.wsUrl, hh.minerKey)).rejects.toThrow(/429/);
    const other = await hh.newKey("acme", "miner");
    const c = await RawMiner.open(hh.wsUrl, other.key);
    await expect(RawMiner.open(hh.wsUrl, other.key)).rejects.toThrow(/503/);
    for (const m of [a, b, c]) m.close();
    await waitFor("connections released", () => hh.coordinator.gateway.connectedMiners(), (n) => n === 0);
    const d = await waitFor("a connection fits again", () => RawMiner.open(hh.wsUrl, hh.minerKey).catch(() => undefined), (m) => m !== undefined);
    d!.close();

    const id = await submitJob(hh, { model: uniqueModel() });
    const ac = new AbortController();
    const s1 = await fetch(`${hh.url}/v1/jobs/${id}/events`, { headers: { authorization: `Bearer ${hh.key}` }, signal: ac.signal });
    const s2 = await fetch(`${hh.url}/v1/jobs/${id}/events`, { headers: { authorization: `Bearer ${hh.key}` }, signal: ac.signal });
    expect([s1.status, s2.status]).toEqual([200, 200]);
    await expectProblem(await hh.call("GET", `/v1/jobs/${id}/events`), 429, "too_many_streams");
    ac.abort();
  });
});

describe("hostile client: slow sockets", () => {
  it("a client that never finishes its headers, or its body, is cut off; an upgraded WebSocket and an event stream are not", async () => {
    const hh = await start({ "server.headers_timeout": "1s", "server.request_timeout": "1s" });
    const port = Number(new URL(hh.url).port);
    const slow = (text: string): Promise<string> =>
      new Promise((resolve, reject) => {
        const sock = connect(port, "127.0.0.1", () => sock.write(text));
        let got = "";
        sock.on("data", (d: Buffer) => (got += d.toString()));
        sock.on("close", () => resolve(got));
        sock.on("error", reject);
        // Far beyond the timeouts: only a server that never cuts it would get here.
        setTimeout(() => {
          sock.destroy();
          reject(new Error("the server kept a slow socket open for 30 s"));
        }, 30_000).unref();
      });
    const headers = slow("GET /v1/jobs HTTP/1.1\r\nHost: x\r\n");
    const body = slow(`POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${hh.key}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"model":`);
    const { m } = await minerWith(hh, "patient", {});
    const id = await submitJob(hh, { model: uniqueModel() });
    const ac = new AbortController();
    const events = await fetch(`${hh.url}/v1/jobs/${id}/events`, { headers: { authorization: `Bearer ${hh.key}` }, signal: ac.signal });
    expect((await headers).split("\r\n")[0] ?? "").toMatch(/^(HTTP\/1\.1 408 .*|)$/);
    expect((await body).split("\r\n")[0] ?? "").toMatch(/^(HTTP\/1\.1 408 .*|)$/);
    // Both slow sockets are gone, well past both timeouts: the WebSocket and the stream still live.
    await sync(m);
    expect(m.closed).toBeUndefined();
    const reader = events.body!.getReader();
    const first = (await reader.read()) as { value?: Uint8Array };
    expect(new TextDecoder().decode(first.value)).toContain("event: snapshot");
    ac.abort();
    m.close();
  });
});
