import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Cluster, assertBuilt } from "./cluster.js";

/**
 * Matching across real miners: one reports 8× H200 (141 GB each), the other 1× RTX 4090 (24 GB),
 * each through a stand-in nvidia-smi playing a recorded fixture. Jobs carry hard requirements;
 * each must land on a miner that satisfies them, and one nobody satisfies waits, saying so; one
 * that waits for a busy miner counts the miners that could run it, and only those.
 */
describe("routing by requirements", () => {
  let cluster: Cluster;
  let h200: string;
  let rtx: string;

  beforeAll(async () => {
    assertBuilt();
    cluster = await Cluster.start();
    const [a, b] = await Promise.all([
      cluster.startMiner({ name: "hgx-h200", gpus: "8x-h200.txt", fakeTokensPerSecond: 400 }),
      cluster.startMiner({ name: "desk-4090", gpus: "1x-rtx4090.txt", fakeTokensPerSecond: 400 }),
    ]);
    h200 = a.minerId;
    rtx = b.minerId;
    expect(h200).not.toBe(rtx);
  });

  afterAll(async (ctx) => {
    if (ctx.tasks.some((t) => t.result?.state === "fail")) console.error(cluster.tails());
    await cluster?.close();
  });

  const job = (requirements: Record<string, unknown>, seed: number, maxNewTokens = 20) => ({
    model: "tiny-gpt2",
    input: "route me",
    requirements,
    parameters: { max_new_tokens: maxNewTokens, seed },
  });

  it("sends jobs only to miners that meet their requirements; an unmatched job waits with eligible_miners 0", async () => {
    // Submitted first: if anything could take it, it would be gone by the time the others finish.
    const a100 = await cluster.submit(job({ gpu_type: "a100" }, 1));

    const needsVram = await Promise.all([1, 2, 3].map((s) => cluster.submit(job({ min_vram_gb: 40 }, s))));
    const needsH200 = await Promise.all([4, 5, 6].map((s) => cluster.submit(job({ gpu_type: "h200" }, s))));
    const needs4090 = await cluster.submit(job({ gpu_type: "rtx4090" }, 7));
    const needsTwo = await cluster.submit(job({ gpu_count: 2 }, 8));

    for (const id of [...needsVram, ...needsH200, needsTwo]) {
      const done = await cluster.waitForJob(id, (j) => j.status === "completed", "completed");
      expect(done.miner_id).toBe(h200);
    }
    const done4090 = await cluster.waitForJob(needs4090, (j) => j.status === "completed", "completed");
    expect(done4090.miner_id).toBe(rtx);

    const waiting = await cluster.job(a100);
    expect(waiting).toMatchObject({ status: "queued", eligible_miners: 0, miner_id: null, attempt: 0 });

    // The same job without requirements can run anywhere.
    const anywhere = await cluster.submit(job({}, 9));
    const free = await cluster.waitForJob(anywhere, (j) => j.status === "completed", "completed");
    expect([h200, rtx]).toContain(free.miner_id);
    expect((await cluster.job(a100)).status).toBe("queued");
  });

  it("a job waiting for a busy miner that can run it counts that miner in eligible_miners, and not an idle one that cannot", async () => {
    // Fill every slot of the RTX 4090 miner with long runs (4096 tokens at 400/s; cancelled below).
    const hello = cluster.coordinator!.logs().find((l) => l.msg === "miner connected" && l.name === "desk-4090");
    const slots = hello?.slots as number;
    expect(slots).toBeGreaterThanOrEqual(1);
    const blockers: string[] = [];
    for (let i = 0; i < slots; i++) blockers.push(await cluster.submit(job({ gpu_type: "rtx4090" }, 20 + i, 4096)));
    for (const id of blockers) expect(await cluster.waitForJob(id, (j) => j.status === "running", "running")).toMatchObject({ miner_id: rtx });

    // The H200 miner is idle: were it eligible, it would have taken the job at once.
    const waiting = await cluster.submit(job({ gpu_type: "rtx4090" }, 30));
    expect(await cluster.job(waiting)).toMatchObject({ status: "queued", eligible_miners: 1, miner_id: null, attempt: 0 });

    for (const id of blockers) expect((await cluster.api("DELETE", `/v1/jobs/${id}`)).status).toBe(202);
    const done = await cluster.waitForJob(waiting, (j) => j.status === "completed", "completed");
    expect(done.miner_id).toBe(rtx);
  });
});
