import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { AssignFrame, ErrorFrame, WelcomeFrame } from "../../src/protocol/frames.js";
import { databasePath } from "../../src/coordinator/coordinator.js";
import { SqliteJobStore } from "../../src/coordinator/store/sqlite/sqlite-job-store.js";
import { waitFor } from "../e2e/cluster.js";
import { RawMiner, helloFrame } from "../e2e/raw-miner.js";
import { startApi, uniqueModel, type ApiHarness } from "./api-harness.js";

/**
 * GET /v1/jobs/{id} answers are kept as written until what they are made of changes
 * (src/coordinator/http/status-cache.ts). Each case changes one input without touching the
 * others, so each fails if that input's check is taken out: the running attempt's live
 * progress (no store write before a renewal), the fleet (a miner's draining flag, in memory
 * only), another process's commit (data_version), and the tenant in the key.
 */
let api: ApiHarness & { key: string };
let minerKey = "";
const miners: RawMiner[] = [];

beforeAll(async () => {
  api = await startApi({ "limits.requests_per_minute": 100_000, "limits.requests_per_hour": 100_000 });
  minerKey = (await api.newKey("acme", "miner")).key;
});

afterAll(async () => {
  for (const m of miners) m.close();
  await api.stop();
});

async function status(id: string, key?: string): Promise<{ code: number; body: Record<string, unknown> }> {
  const res = await api.call("GET", `/v1/jobs/${id}`, key === undefined ? {} : { key });
  return { code: res.status, body: (await res.json()) as Record<string, unknown> };
}

async function submit(model: string, body: Record<string, unknown> = {}): Promise<string> {
  const res = await api.call("POST", "/v1/jobs", { json: { model, input: "kept answers", ...body } });
  expect(res.status).toBe(201);
  return ((await res.json()) as { job_id: string }).job_id;
}

async function miner(name: string, model: string): Promise<RawMiner> {
  const m = await RawMiner.open(`${api.url.replace(/^http/, "ws")}/v1/miners/connect`, minerKey);
  m.send({ ...helloFrame(name), models: [model], slots: 1, free_slots: 0 });
  await m.next<WelcomeFrame>((f) => f.type === "welcome");
  miners.push(m);
  return m;
}

/** Every frame sent before it has been handled once the gateway answers an unknown frame. */
async function sync(m: RawMiner): Promise<void> {
  m.send({ type: "sync_probe" });
  await m.next<ErrorFrame>((f) => f.type === "error" && f.code === "frame_unknown_type");
}

async function holding(m: RawMiner, id: string): Promise<AssignFrame> {
  m.send({ type: "pull", free_slots: 1 });
  const a = await m.next<AssignFrame>((f) => f.type === "assign" && f.job.job_id === id);
  m.send({ type: "started", job_id: id, attempt: a.attempt, lease_token: a.lease_token });
  await waitFor("running", () => status(id), (s) => s.body.status === "running");
  return a;
}

describe("kept status answers", () => {
  it("a running job's answer follows its live progress between lease renewals", async () => {
    const model = uniqueModel();
    const m = await miner("progress-rig", model);
    const id = await submit(model, { parameters: { max_new_tokens: 100 } });
    const a = await holding(m, id);
    const lease = { job_id: id, attempt: a.attempt, lease_token: a.lease_token };
    m.send({ type: "progress", ...lease, tokens: 10, max_tokens: 100, tokens_per_s: 50 });
    await sync(m);
    expect((await status(id)).body.progress).toBe(10);
    expect((await status(id)).body.progress).toBe(10);
    m.send({ type: "progress", ...lease, tokens: 30, max_tokens: 100, tokens_per_s: 50 });
    await sync(m);
    expect((await status(id)).body).toMatchObject({ status: "running", progress: 30 });
  });

  it("a queued job's eligible miners follow a change the store never sees (a draining miner pulling again)", async () => {
    const model = uniqueModel();
    const m = await miner("draining-rig", model);
    const id = await submit(model);
    const a = await holding(m, id);
    // Handed back for a drain: queued again, and the miner counts as draining until its next pull.
    m.send({ type: "released", job_id: id, attempt: a.attempt, lease_token: a.lease_token, reason: "draining" });
    await m.next((f) => f.type === "ack" && f.job_id === id);
    const drained = await status(id);
    expect(drained.body).toMatchObject({ status: "queued", eligible_miners: 0 });
    expect(drained.body.waiting_reason).toEqual(expect.any(String));
    expect((await status(id)).body).toEqual(drained.body);
    // A pull with no free slot ends the drain and claims nothing: no store write.
    m.send({ type: "pull", free_slots: 0 });
    await sync(m);
    const back = await status(id);
    expect(back.body).toMatchObject({ status: "queued", eligible_miners: 1 });
    expect(back.body.waiting_reason).toBeUndefined();
  });

  it("another process's commit shows in the next answer", async () => {
    const id = await submit(uniqueModel());
    expect((await status(id)).body.status).toBe("queued");
    expect((await status(id)).body.status).toBe("queued");
    // `aitbc` commands open the database file as another connection, as this store does.
    const other = new SqliteJobStore(databasePath(api.dir));
    try {
      expect(await other.requestCancel("acme", id, Date.now())).toMatchObject({ outcome: "cancelled" });
    } finally {
      await other.close();
    }
    expect((await status(id)).body).toMatchObject({ status: "cancelled" });
  });

  it("one tenant's kept answer is never another's", async () => {
    // The key first: creating it is a write, which would drop every kept answer.
    const stranger = (await api.newKey("globex")).key;
    const id = await submit(uniqueModel());
    expect((await status(id)).code).toBe(200);
    const theirs = await status(id, stranger);
    expect(theirs.code).toBe(404);
    expect(theirs.body.code).toBe("job_not_found");
  });
});
