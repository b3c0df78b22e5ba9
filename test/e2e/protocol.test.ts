import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { WebSocket } from "ws";
import type { AckFrame, AssignFrame, ErrorFrame } from "../../src/protocol/frames.js";
import { Cluster, assertBuilt } from "./cluster.js";
import { RawMiner, isAck, resultFrame } from "./raw-miner.js";

/**
 * The miner protocol against the real coordinator process, with a raw `ws` client playing the
 * miner frame by frame: fencing (a stale attempt's result is refused, a duplicate of the committed
 * one is a no-op), bad frames, and the miner-key check at the upgrade.
 */
describe("miner protocol against the real coordinator", () => {
  let cluster: Cluster;
  const open: RawMiner[] = [];

  beforeAll(async () => {
    assertBuilt();
    cluster = await Cluster.start();
  });

  afterEach(() => {
    for (const m of open.splice(0)) m.close();
  });

  afterAll(async (ctx) => {
    if (ctx.tasks.some((t) => t.result?.state === "fail")) console.error(cluster.tails());
    await cluster?.close();
  });

  it("refuses a stale attempt's result and acknowledges a duplicate of the committed one as a no-op", async () => {
    const a = await RawMiner.hello(cluster.wsUrl, cluster.minerKey, "raw-a");
    open.push(a.m);
    a.m.send({ type: "pull", free_slots: 1 });
    const jobId = await cluster.submit({ model: "tiny-gpt2", input: "fence me", parameters: { max_new_tokens: 5, seed: 1 } });
    const first = await a.m.next<AssignFrame>((f) => f.type === "assign");
    expect(first).toMatchObject({ job: { job_id: jobId, model: "tiny-gpt2", prompt: "fence me" }, attempt: 1 });
    a.m.send({ type: "started", job_id: jobId, attempt: 1, lease_token: first.lease_token });
    await cluster.waitForJob(jobId, (j) => j.status === "running", "running");

    // Miner A goes quiet (no heartbeats); miner B waits with a free slot.
    const b = await RawMiner.hello(cluster.wsUrl, cluster.minerKey, "raw-b");
    open.push(b.m);
    expect(b.welcome.miner_id).not.toBe(a.welcome.miner_id);
    b.m.send({ type: "pull", free_slots: 1 });
    const second = await b.m.next<AssignFrame>((f) => f.type === "assign");
    expect(second).toMatchObject({ job: { job_id: jobId }, attempt: 2 });
    expect(second.lease_token).not.toBe(first.lease_token);
    // A is told its lease is gone.
    await a.m.next((f) => f.type === "cancel" && f.job_id === jobId && f.attempt === 1);

    // A's late result is stale; the job stays with B's attempt.
    a.m.send(resultFrame(first, "from the first attempt"));
    const staleAck = await a.m.next<AckFrame>(isAck(jobId, 1));
    expect(staleAck).toMatchObject({ of: "result", status: "stale" });
    expect(await cluster.job(jobId)).toMatchObject({ status: "assigned", attempt: 2, miner_id: b.welcome.miner_id, result: null });

    // B's result commits; the same result again is a duplicate.
    const output = "from the second attempt";
    b.m.send(resultFrame(second, output));
    expect(await b.m.next<AckFrame>(isAck(jobId, 2))).toMatchObject({ of: "result", status: "committed" });
    b.m.send(resultFrame(second, output));
    expect(await b.m.next<AckFrame>(isAck(jobId, 2))).toMatchObject({ of: "result", status: "duplicate" });
    // A different output for the committed attempt is not a duplicate; nor is A's attempt now.
    b.m.send(resultFrame(second, "something else"));
    expect(await b.m.next<AckFrame>(isAck(jobId, 2))).toMatchObject({ status: "stale" });
    a.m.send(resultFrame(first, "from the first attempt"));
    expect(await a.m.next<AckFrame>(isAck(jobId, 1))).toMatchObject({ status: "stale" });

    const done = await cluster.job(jobId);
    expect(done).toMatchObject({ status: "completed", attempt: 2, miner_id: b.welcome.miner_id });
    const download = await cluster.api<{ output: string; output_sha256: string }>("GET", `/v1/jobs/${jobId}/download`);
    expect(download.body.output).toBe(output);
    const changes = (await cluster.events(jobId)).map((e) => e.event);
    expect(changes.filter((e) => e === "completed")).toHaveLength(1);
    expect(changes.filter((e) => e === "requeued")).toHaveLength(1);
  });

  it("cancels a job whose miner is gone once its lease expires, without requeueing it", async () => {
    const { m } = await RawMiner.hello(cluster.wsUrl, cluster.minerKey, "raw-gone");
    m.send({ type: "pull", free_slots: 1 });
    const jobId = await cluster.submit({ model: "tiny-gpt2", input: "orphan", parameters: { max_new_tokens: 5, seed: 2 } });
    const a = await m.next<AssignFrame>((f) => f.type === "assign" && f.job.job_id === jobId);
    m.send({ type: "started", job_id: jobId, attempt: a.attempt, lease_token: a.lease_token });
    await cluster.waitForJob(jobId, (j) => j.status === "running", "running");
    m.close();

    const del = await cluster.api("DELETE", `/v1/jobs/${jobId}`);
    expect(del.status).toBe(202);
    const done = await cluster.waitForJob(jobId, (j) => j.status === "cancelled", "cancelled");
    expect(done).toMatchObject({ attempt: 1, result: null });
    const changes = (await cluster.events(jobId)).map((e) => e.event);
    expect(changes).not.toContain("requeued");
    expect(changes.at(-1)).toBe("cancelled");
  });

  it("answers bad frames with error frames and closes the connection after three in a row", async () => {
    const { m } = await RawMiner.hello(cluster.wsUrl, cluster.minerKey, "raw-bad");
    open.push(m);
    m.sendRaw("this is not json");
    expect(await m.next<ErrorFrame>((f) => f.type === "error")).toMatchObject({ code: "frame_not_json", fatal: false });
    m.send({ type: "no_such_frame" });
    expect(await m.next<ErrorFrame>((f) => f.type === "error")).toMatchObject({ code: "frame_unknown_type", fatal: false });
    expect(m.closed).toBeUndefined();
    m.send({ type: "pull" }); // free_slots missing
    expect(await m.next<ErrorFrame>((f) => f.type === "error")).toMatchObject({ code: "frame_invalid", fatal: true });
    expect((await m.waitClosed()).code).toBe(1008);
  });

  it("counts only bad frames in a row: a good frame resets the count", async () => {
    const { m } = await RawMiner.hello(cluster.wsUrl, cluster.minerKey, "raw-reset");
    open.push(m);
    for (let round = 0; round < 2; round++) {
      m.sendRaw("{");
      m.sendRaw("{");
      expect(await m.next<ErrorFrame>((f) => f.type === "error")).toMatchObject({ fatal: false });
      expect(await m.next<ErrorFrame>((f) => f.type === "error")).toMatchObject({ fatal: false });
      m.send({ type: "pull", free_slots: 0 });
    }
    m.send({ type: "heartbeat", in_flight: [], free_slots: 0 });
    // Still open: the connection answers another bad frame with a non-fatal error.
    m.sendRaw("{");
    expect(await m.next<ErrorFrame>((f) => f.type === "error")).toMatchObject({ fatal: false });
    expect(m.closed).toBeUndefined();
  });

  it("refuses the upgrade without a miner key (a client key, no key, an unknown key)", async () => {
    await expect(RawMiner.open(cluster.wsUrl, cluster.clientKey)).rejects.toThrow("upgrade refused: 401");
    await expect(RawMiner.open(cluster.wsUrl, "not-a-key")).rejects.toThrow("upgrade refused: 401");
    await expect(
      new Promise((resolve, reject) => {
        const ws = new WebSocket(cluster.wsUrl);
        ws.once("open", () => resolve("open"));
        ws.once("unexpected-response", (_req, res) => reject(new Error(`upgrade refused: ${res.statusCode}`)));
        ws.once("error", reject);
      }),
    ).rejects.toThrow("upgrade refused: 401");
    // The miner key works at the same URL.
    const ok = await RawMiner.hello(cluster.wsUrl, cluster.minerKey, "raw-ok");
    open.push(ok.m);
    expect(ok.welcome.miner_id).toMatch(/^miner_/);
  });
});
