import { ListObjectsV2Command, S3Client } from "@aws-sdk/client-s3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { AckFrame, AssignFrame, CancelFrame, WelcomeFrame } from "../../src/protocol/frames.js";
import { expectProblem, startApi, type ApiHarness } from "../coordinator/api-harness.js";
import { PG_URL, freshSchema, requirePostgres } from "../coordinator/pg-harness.js";
import { readSse, waitFor, type SseEvent } from "../e2e/cluster.js";
import { RawMiner, helloFrame, isAck, resultFrame } from "../e2e/raw-miner.js";
import { replicaSettings, startS3 } from "../s3/s3-server.js";

/**
 * Two coordinator replicas in this process on one real PostgreSQL schema, results in a real
 * S3-compatible server: what one replica accepts, the other serves; signals cross between them.
 */
let a: ApiHarness & { key: string };
let b: ApiHarness & { key: string };
let minerKey = "";
let s3Endpoint = "";
const cleanups: (() => Promise<void>)[] = [];

beforeAll(async () => {
  await requirePostgres();
  const s3 = await startS3(["aitbc-results"]);
  cleanups.push(s3.close);
  s3Endpoint = s3.endpoint;
  const { schema, drop } = await freshSchema("api");
  cleanups.push(drop);
  const settings = {
    ...replicaSettings(PG_URL, schema, s3.endpoint, "aitbc-results"),
    "results.prefix": "replicas/",
    "limits.requests_per_minute": 1_000,
    "scheduler.heartbeat": "300ms",
    // Replicas keep key rows this long: only a revocation's NOTIFY can make them refuse a key sooner.
    "limits.revocation_check": "60s",
    tenants: { acme: { s3_buckets: ["aitbc-results"] } },
  };
  a = await startApi({ ...settings, "storage.replica": "replica-a" });
  cleanups.push(() => a.stop());
  b = await startApi({ ...settings, "storage.replica": "replica-b" });
  cleanups.push(() => b.stop());
  minerKey = (await a.newKey("acme", "miner")).key;
}, 60_000);

afterAll(async () => {
  for (const c of cleanups.reverse()) await c();
});

const wsUrl = (h: ApiHarness): string => `${h.url.replace(/^http/, "ws")}/v1/miners/connect`;

describe("two replicas on PostgreSQL and S3", () => {
  it("a job submitted on one replica runs on a miner of the other; its events, cancel and result cross over", async () => {
    const model = "gpt2-replicas";
    const m = await RawMiner.open(wsUrl(b), minerKey);
    m.send({ ...helloFrame("on-b"), models: [model] });
    const welcome = await m.next<WelcomeFrame>((f) => f.type === "welcome");
    // Submitted on A: B's miner pulls it (a NOTIFY wakes B's dispatcher).
    const res = await a.call("POST", "/v1/jobs", { json: { model, input: "cross", parameters: { max_new_tokens: 8 } } });
    expect(res.status).toBe(201);
    const id = ((await res.json()) as { job_id: string }).job_id;
    // A counts B's miner: eligible miners come from the whole fleet.
    await waitFor("A sees B's miner", async () => ((await (await a.call("GET", `/v1/jobs/${id}`)).json()) as Record<string, unknown>), (j) => j.status !== "queued" || j.eligible_miners === 1);
    m.send({ type: "pull", free_slots: 1 });
    const assign = await m.next<AssignFrame>((f) => f.type === "assign" && f.job.job_id === id);
    m.send({ type: "started", job_id: id, attempt: assign.attempt, lease_token: assign.lease_token });
    // Follow on A while B's miner works.
    const stream = fetch(`${a.url}/v1/jobs/${id}/events`, { headers: { authorization: `Bearer ${a.key}` } }).then((r) => r.text());
    await waitFor("running", async () => (await a.coordinator.store.getJobById(id))?.status, (s) => s === "running");
    m.send(resultFrame(assign, "made on replica b"));
    expect(await m.next<AckFrame>(isAck(id, assign.attempt))).toMatchObject({ status: "committed" });
    const events = await stream;
    expect(events).toContain("event: running");
    expect(events).toContain("event: completed");
    const dl = await a.call("GET", `/v1/jobs/${id}/download`);
    expect(((await dl.json()) as { output: string }).output).toBe("made on replica b");
    expect(welcome.miner_id).toMatch(/^miner_/);

    // A cancel sent to A reaches the miner on B.
    const res2 = await a.call("POST", "/v1/jobs", { json: { model, input: "to cancel" } });
    const id2 = ((await res2.json()) as { job_id: string }).job_id;
    m.send({ type: "pull", free_slots: 1 });
    const assign2 = await m.next<AssignFrame>((f) => f.type === "assign" && f.job.job_id === id2);
    m.send({ type: "started", job_id: id2, attempt: assign2.attempt, lease_token: assign2.lease_token });
    await waitFor("running", async () => (await a.coordinator.store.getJobById(id2))?.status, (s) => s === "running");
    expect((await a.call("DELETE", `/v1/jobs/${id2}`)).status).toBe(202);
    expect(await m.next<CancelFrame>((f) => f.type === "cancel" && f.job_id === id2)).toMatchObject({ reason: "cancelled" });
    m.send({ type: "fail", job_id: id2, attempt: assign2.attempt, lease_token: assign2.lease_token, code: "cancelled", message: "stopped", retryable: false });
    await waitFor("cancelled", async () => (await b.coordinator.store.getJobById(id2))?.status, (s) => s === "cancelled");
    m.close();
  });

  it("a job's text reaches SSE clients on the other replica; a late joiner there gets the text so far", async () => {
    const model = "gpt2-text-replicas";
    const m = await RawMiner.open(wsUrl(b), minerKey);
    m.send({ ...helloFrame("texter-b"), models: [model] });
    await m.next<WelcomeFrame>((f) => f.type === "welcome");
    const res = await a.call("POST", "/v1/jobs", { json: { model, input: "text across", parameters: { max_new_tokens: 512 } } });
    const id = ((await res.json()) as { job_id: string }).job_id;
    m.send({ type: "pull", free_slots: 1 });
    const assign = await m.next<AssignFrame>((f) => f.type === "assign" && f.job.job_id === id);
    const lease = { job_id: id, attempt: assign.attempt, lease_token: assign.lease_token };
    m.send({ type: "started", ...lease });
    await waitFor("running", async () => (await a.coordinator.store.getJobById(id))?.status, (s) => s === "running");
    const early = sse(a, id);
    await early.opened;
    // A piece longer than one NOTIFY payload (slices must reassemble), then short ones.
    const big = `${"é".repeat(5_000)}\u{1F600}${"ß".repeat(3_000)}`;
    const pieces = [big, " and", " more", " text"];
    let text = "";
    for (const [i, piece] of pieces.entries()) {
      m.send({ type: "text", ...lease, index: text.length, delta: piece, tokens: i + 1, tokens_per_s: 10 });
      text += piece;
    }
    // The early client on A follows the text made on B.
    await waitFor("A's client has B's text", () => Promise.resolve(rebuild(early.events())), (t) => t === text);
    // A client that joins on A now gets the whole text so far in one token event.
    const late = sse(a, id);
    await late.opened;
    await waitFor("the late joiner's first token", () => Promise.resolve(late.events().filter((e) => e.event === "token").length), (n) => n >= 1);
    const firstLate = late.events().find((e) => e.event === "token")!;
    expect(firstLate.data).toMatchObject({ index: 0, text });
    // The last piece, then at once the result: B sends the piece before the completion, so A's
    // clients have the whole output when `completed` comes and A reads nothing back from S3.
    const results = a.coordinator.context.results;
    const read = results.read.bind(results);
    let readBack = 0;
    results.read = (location) => {
      if (location.includes(id)) readBack += 1;
      return read(location);
    };
    try {
      m.send({ type: "text", ...lease, index: text.length, delta: " end", tokens: 5, tokens_per_s: 10 });
      text += " end";
      m.send(resultFrame(assign, text));
      expect(await m.next<AckFrame>(isAck(id, assign.attempt))).toMatchObject({ status: "committed" });
      for (const stream of [early, late]) {
        const events = await stream.done;
        expect(events.at(-1)?.event).toBe("completed");
        expect(rebuild(events)).toBe(text);
      }
    } finally {
      results.read = read;
    }
    expect(readBack).toBe(0);
    m.close();
  });

  it("a miner that reconnects to the other replica fences its old session out", async () => {
    const first = await RawMiner.open(wsUrl(a), minerKey);
    first.send(helloFrame("mover"));
    await first.next<WelcomeFrame>((f) => f.type === "welcome");
    const second = await RawMiner.open(wsUrl(b), minerKey);
    second.send(helloFrame("mover"));
    await second.next<WelcomeFrame>((f) => f.type === "welcome");
    expect((await first.waitClosed()).code).toBe(4000);
    expect(a.coordinator.gateway.miners().map((s) => s.name)).not.toContain("mover");
    expect(b.coordinator.gateway.miners().map((s) => s.name)).toContain("mover");
    second.close();
  });

  it("an operator on one replica drains, lists and disconnects a miner held by the other", async () => {
    const ops = (await a.newKey("ops", "operator")).key;
    const model = "gpt2-operators";
    const m = await RawMiner.open(wsUrl(b), minerKey);
    const gpu = { index: 0, name: "NVIDIA A100-SXM4-80GB", vram_total_mb: 81920, vram_free_mb: 81050 };
    m.send({ ...helloFrame("held-by-b"), models: [model], gpus: [gpu] });
    const welcome = await m.next<WelcomeFrame>((f) => f.type === "welcome");
    type Fleet = { miner_id: string; replica: string | null; drained: boolean; connected: boolean; gpus: { index: number; utilization_percent: number | null; vram_free_mb: number }[] }[];
    const fleet = async () => ((await (await a.call("GET", "/v1/admin/miners", { key: ops })).json()) as { items: Fleet }).items;
    expect((await fleet()).find((x) => x.miner_id === welcome.miner_id)).toMatchObject({ replica: "replica-b", connected: true, drained: false, gpus: [{ utilization_percent: null }] });
    // Protocol 5 heartbeats carry the GPUs' load; A shows what B's miner said (a GPU it never declared, and more VRAM than it has, are not believed).
    m.send({ type: "heartbeat", in_flight: [], free_slots: 1, gpus: [{ index: 0, utilization_percent: 87, vram_free_mb: 999_999 }, { index: 5, utilization_percent: 1, vram_free_mb: 1 }] });
    await waitFor("A shows the GPU load", async () => (await fleet()).find((x) => x.miner_id === welcome.miner_id)?.gpus, (g) => g?.[0]?.utilization_percent === 87);
    expect((await fleet()).find((x) => x.miner_id === welcome.miner_id)?.gpus).toMatchObject([{ index: 0, utilization_percent: 87, vram_free_mb: 81920 }]);
    // Drained on A: B stops offering it jobs (told in the drain's transaction).
    const d = await a.call("POST", `/v1/admin/miners/${welcome.miner_id}/drain`, { key: ops });
    expect(d.status).toBe(200);
    await waitFor("B applies the drain", () => Promise.resolve(b.coordinator.gateway.miners().find((x) => x.minerId === welcome.miner_id)?.operatorDrained), (v) => v === true);
    const res = await a.call("POST", "/v1/jobs", { json: { model, input: "not for a drained miner" } });
    const id = ((await res.json()) as { job_id: string }).job_id;
    m.send({ type: "pull", free_slots: 1 });
    await expect(m.next<AssignFrame>((f) => f.type === "assign", 1_500)).rejects.toThrow();
    expect((await b.coordinator.store.getJobById(id))?.status).toBe("queued");
    // Undrained on B itself: the job goes out at once.
    expect((await b.call("POST", `/v1/admin/miners/${welcome.miner_id}/undrain`, { key: ops })).status).toBe(200);
    m.send({ type: "pull", free_slots: 1 });
    const assign = await m.next<AssignFrame>((f) => f.type === "assign" && f.job.job_id === id);
    // Disconnected from A: B closes the session and hands the lease back.
    const x = await a.call("POST", `/v1/admin/miners/${welcome.miner_id}/disconnect`, { key: ops });
    expect(x.status).toBe(202);
    expect((await m.waitClosed()).code).toBe(4001);
    await waitFor("the lease handed back", async () => await a.coordinator.store.getJobById(id), (j) => j?.status === "queued" && j.attempt === assign.attempt);
  });

  it("a key revoked through one replica is refused at once on both, though each keeps the key rows it read", async () => {
    const k = await a.newKey("revoked-elsewhere");
    // Both replicas have read (and keep) the key's row.
    expect((await a.call("GET", "/v1/jobs", { key: k.key })).status).toBe(200);
    expect((await b.call("GET", "/v1/jobs", { key: k.key })).status).toBe(200);
    expect(await a.coordinator.store.revokeKey(k.id, Date.now())).toBe(true);
    await expectProblem(await a.call("GET", "/v1/jobs", { key: k.key }), 401, "unauthorized");
    const refused = await waitFor("the other replica refuses the key", () => b.call("GET", "/v1/jobs", { key: k.key }), (r) => r.status === 401, 10_000);
    await expectProblem(refused, 401, "unauthorized");
  });

  it("a result for a job cancelled meanwhile is stored without a read first (every S3 put is a new object), refused, and its copy removed", async () => {
    const model = "gpt2-cancelled-result";
    const m = await RawMiner.open(wsUrl(b), minerKey);
    m.send({ ...helloFrame("cancelled-result"), models: [model] });
    await m.next<WelcomeFrame>((f) => f.type === "welcome");
    const id = ((await (await a.call("POST", "/v1/jobs", { json: { model, input: "cancel me before my result" } })).json()) as { job_id: string }).job_id;
    m.send({ type: "pull", free_slots: 1 });
    const assign = await m.next<AssignFrame>((f) => f.type === "assign" && f.job.job_id === id);
    m.send({ type: "started", job_id: id, attempt: assign.attempt, lease_token: assign.lease_token });
    await waitFor("running", async () => (await b.coordinator.store.getJobById(id))?.status, (s) => s === "running");
    expect((await a.call("DELETE", `/v1/jobs/${id}`)).status).toBe(202);
    await m.next<CancelFrame>((f) => f.type === "cancel" && f.job_id === id);
    // The miner's session still holds the lease: its result is stored, then the commit refuses it.
    const store = b.coordinator.store;
    const original = store.getJobById.bind(store);
    let reads = 0;
    store.getJobById = (jobId) => {
      if (jobId === id) reads += 1;
      return original(jobId);
    };
    try {
      m.send(resultFrame(assign, "too late"));
      expect(await m.next<AckFrame>(isAck(id, assign.attempt))).toMatchObject({ of: "result", status: "stale" });
    } finally {
      store.getJobById = original;
    }
    // One read, after the refused commit (whether the committed result is another's file); none before the put.
    expect(reads).toBe(1);
    expect(await original(id)).toMatchObject({ status: "cancelled", result: null });
    const s3 = new S3Client({ endpoint: s3Endpoint, region: "us-east-1", forcePathStyle: true, credentials: { accessKeyId: "S3RVER", secretAccessKey: "S3RVER" } });
    try {
      const listed = await s3.send(new ListObjectsV2Command({ Bucket: "aitbc-results", Prefix: `replicas/results/${id}/` }));
      expect(listed.KeyCount ?? 0).toBe(0);
    } finally {
      s3.destroy();
    }
    m.close();
  });

  it("a result committed on a replica is uploaded to the job's s3:// destination by that replica", async () => {
    const res = await b.call("POST", "/v1/jobs", { json: { model: "gpt2-upload", input: "deliver me", output_config: { destination: "s3://aitbc-results/exports", format: "text" } } });
    expect(res.status).toBe(201);
    const { job_id: id } = (await res.json()) as { job_id: string };
    await a.complete(id, "delivered text");
    await a.coordinator.uploader.idle();
    const st = (await (await b.call("GET", `/v1/jobs/${id}`)).json()) as { status: string; result: { upload?: { state: string; uri?: string } } };
    expect(st).toMatchObject({ status: "completed", result: { upload: { state: "uploaded", uri: `s3://aitbc-results/exports/${id}.txt` } } });
  });

  it("an event stream does not lose a change whose hint arrives while it replays the log", async () => {
    const events = b.coordinator.context.events;
    const store = b.coordinator.store;
    // Resyncs re-read every stream (a cover for lost hints): the change must arrive without one.
    let resyncs = 0;
    const offResync = events.onResync(() => (resyncs += 1));
    try {
      for (let tries = 1; ; tries++) {
        const res = await a.call("POST", "/v1/jobs", { json: { model: `gpt2-replay-${tries}`, input: "replayed" } });
        const { job_id: id } = (await res.json()) as { job_id: string };
        // B's stream opens with one read of the job and its log (only "queued"), then A commits
        // "assigned" and "running" and B gets their hints, all before that read answers.
        const original = store.jobWithEvents.bind(store);
        let replayed = false;
        let lease: { jobId: string; attempt: number; leaseToken: string } | undefined;
        store.jobWithEvents = async (jobId, after) => {
          const got = await original(jobId, after);
          if (jobId !== id || replayed) return got;
          replayed = true;
          const hinted = new Promise<void>((resolve) => {
            const off = events.onRemote((c) => {
              if (c.jobId === id && c.type === "running") {
                off();
                resolve();
              }
            });
          });
          lease = await a.run(id);
          await hinted;
          return got;
        };
        const before = resyncs;
        const stream = sse(b, id);
        try {
          await waitFor("the stream shows running", () => Promise.resolve(stream.events().map((e) => e.event)), (seen) => seen.includes("running"), 10_000);
        } finally {
          store.jobWithEvents = original;
        }
        expect(stream.events().map((e) => e.event)).toEqual(["snapshot", "queued", "assigned", "running"]);
        const put = await a.coordinator.context.results.put(id, lease!.attempt, Buffer.from("done", "utf8"));
        const outcome = await a.coordinator.store.commitResult(
          lease!,
          { sha256: put.sha256, bytes: put.bytes, location: put.location, finishReason: "length", usage: { prompt_tokens: 1, completion_tokens: 1 }, tokensPerSecond: 10, attempt: lease!.attempt },
          Date.now(),
        );
        expect(outcome).toBe("committed");
        expect((await stream.done).at(-1)?.event).toBe("completed");
        // A resync in the window would have delivered it too: only a run without one proves the point.
        if (resyncs === before) break;
        expect(tries).toBeLessThan(3);
      }
    } finally {
      offResync();
    }
  });

  it("rate limits count once across the replicas", async () => {
    const limited = await a.newKey("ratelimited");
    const hh = a; // the key is in the shared store; both replicas see it
    // The harness set 1000/min; use the hour window of a fresh pair of replicas instead: count by the headers.
    const r1 = await hh.call("GET", "/v1/jobs", { key: limited.key });
    const r2 = await b.call("GET", "/v1/jobs", { key: limited.key });
    const r3 = await a.call("GET", "/v1/jobs", { key: limited.key });
    const remaining = [r1, r2, r3].map((r) => Number(r.headers.get("ratelimit-remaining")));
    expect(remaining).toEqual([999, 998, 997]);
    await expectProblem(await a.call("GET", "/v1/jobs/job_nosuchjob", { key: limited.key }), 404, "job_not_found");
    expect(Number((await b.call("GET", "/v1/jobs", { key: limited.key })).headers.get("ratelimit-remaining"))).toBe(995);
  });

  it("a result committed through one replica moves the other replica's estimates (its NOTIFY hint, read back)", async () => {
    const model = "gpt2-estimates";
    const submitOn = async (h: ApiHarness): Promise<{ id: string; estimate: number }> => {
      const res = await h.call("POST", "/v1/jobs", { json: { model, input: "how long", parameters: { max_new_tokens: 100 } } });
      expect(res.status).toBe(201);
      const body = (await res.json()) as { job_id: string; estimated_time_seconds: number };
      return { id: body.job_id, estimate: body.estimated_time_seconds };
    };
    // Config: overhead 2 s + 100 tokens / 20 tokens/s.
    const first = await submitOn(b);
    expect(first.estimate).toBe(7);
    const ref = await a.run(first.id);
    const put = await a.coordinator.context.results.put(first.id, ref.attempt, Buffer.from("out", "utf8"));
    const outcome = await a.coordinator.store.commitResult(
      ref,
      { sha256: put.sha256, bytes: put.bytes, location: put.location, finishReason: "length", usage: { prompt_tokens: 1, completion_tokens: 100 }, tokensPerSecond: 200, attempt: ref.attempt },
      Date.now(),
    );
    expect(outcome).toBe("committed");
    // B learns 200 tokens/s from A's commit: 100 tokens ≈ 0.5 s, plus the queue of the jobs this wait submits.
    const seen = await waitFor("B's estimate from A's result", () => submitOn(b), (j) => j.estimate < 2.5, 10_000, 100);
    expect(seen.estimate).toBeGreaterThan(0.45);
  });
});

type Sse = SseEvent;

/** A job's SSE stream on a replica: `opened` once the snapshot came, `done` when it ends. */
function sse(h: ApiHarness & { key: string }, id: string): { opened: Promise<void>; done: Promise<Sse[]>; events: () => Sse[] } {
  const seen: Sse[] = [];
  let opened: () => void = () => undefined;
  const openedP = new Promise<void>((resolve) => (opened = resolve));
  const done = (async () => {
    const res = await fetch(`${h.url}/v1/jobs/${id}/events`, { headers: { authorization: `Bearer ${h.key}` } });
    for await (const e of readSse(res.body!)) {
      seen.push(e);
      if (e.event === "snapshot") opened();
    }
    return seen;
  })();
  return { opened: openedP, done, events: () => seen };
}

/** The text a client rebuilds from token events: each makes it text.slice(0, index) + text. */
function rebuild(events: Sse[]): string {
  let text = "";
  for (const e of events) {
    if (e.event === "text_restart") text = "";
    if (e.event === "token") text = text.slice(0, e.data.index as number) + (e.data.text as string);
  }
  return text;
}

