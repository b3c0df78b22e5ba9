import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Cluster, assertBuilt, waitFor } from "./cluster.js";

/**
 * Cancelling through the REST API with a real miner: a running job is stopped on the miner and
 * ends `cancelled` (never requeued), and the miner takes the next job; a queued job is cancelled
 * at once.
 */
describe("cancel", () => {
  let cluster: Cluster;
  let minerId: string;

  beforeAll(async () => {
    assertBuilt();
    cluster = await Cluster.start();
    minerId = (await cluster.startMiner({ name: "only-rig", fakeTokensPerSecond: 20 })).minerId;
  });

  afterAll(async (ctx) => {
    if (ctx.tasks.some((t) => t.result?.state === "fail")) console.error(cluster.tails());
    await cluster?.close();
  });

  it("stops a running job on the miner; the job ends cancelled, is never requeued, and the miner is free again", async () => {
    const jobId = await cluster.submit({ model: "tiny-gpt2", input: "stop me", parameters: { max_new_tokens: 2000, seed: 3 } });
    await cluster.waitForJob(jobId, (j) => j.status === "running" && (j.progress as number) > 0, "running with progress");

    const del = await cluster.api("DELETE", `/v1/jobs/${jobId}`);
    expect(del.status).toBe(202);
    expect(del.body).toMatchObject({ job_id: jobId, cancel_requested: true });

    const cancelled = await cluster.waitForJob(jobId, (j) => j.status === "cancelled", "cancelled");
    expect(cancelled).toMatchObject({ attempt: 1, result: null });
    expect((cancelled.progress as number) < 100).toBe(true);
    // The miner stopped and acknowledged with fail "cancelled" (not a lease expiry on the coordinator).
    await waitFor(
      "the miner's cancelled acknowledgement",
      () => Promise.resolve(cluster.coordinator!.logs().some((l) => l.msg === "attempt failed" && l.jobId === jobId && l.code === "cancelled")),
      (seen) => seen,
    );

    // The miner takes the next job (it has one slot, so it must have let go of the cancelled one).
    const next = await cluster.submit({ model: "tiny-gpt2", input: "next one", parameters: { max_new_tokens: 10, seed: 4 } });
    const done = await cluster.waitForJob(next, (j) => j.status === "completed", "completed");
    expect(done.miner_id).toBe(minerId);

    // Well past a lease TTL later the cancelled job is unchanged and its log ends with `cancelled`.
    const after = await cluster.job(jobId);
    expect(after).toMatchObject({ status: "cancelled", attempt: 1 });
    const changes = (await cluster.events(jobId)).map((e) => e.event).filter((e) => e !== "snapshot" && e !== "progress");
    expect(changes).toContain("cancel_requested");
    expect(changes).not.toContain("requeued");
    expect(changes.at(-1)).toBe("cancelled");
    expect(changes.filter((e) => e === "cancelled")).toHaveLength(1);
    expect(changes).not.toContain("completed");

    // Cancelling again is a conflict: the job is finished.
    expect((await cluster.api("DELETE", `/v1/jobs/${jobId}`)).status).toBe(409);
  });

  it("cancels a queued job at once", async () => {
    const jobId = await cluster.submit({ model: "tiny-gpt2", input: "never runs", requirements: { gpu_type: "a100" } });
    const del = await cluster.api("DELETE", `/v1/jobs/${jobId}`);
    expect(del.status).toBe(200);
    expect(del.body).toMatchObject({ job_id: jobId, status: "cancelled" });
    expect(await cluster.job(jobId)).toMatchObject({ status: "cancelled", attempt: 0 });
  });
});
