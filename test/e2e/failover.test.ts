import { afterEach, beforeAll, describe, expect, it } from "vitest";
import { Cluster, assertBuilt } from "./cluster.js";

/**
 * Losing processes mid-job. A miner killed with SIGKILL: its lease runs out, the reaper requeues
 * the job and the other miner finishes it as attempt 2, with exactly one committed result. The
 * coordinator killed with SIGKILL and restarted on the same data dir within the lease: the miner
 * reconnects, resumes its lease and the same attempt finishes.
 */
describe("failover", () => {
  let cluster: Cluster | undefined;

  beforeAll(() => assertBuilt());

  afterEach(async (ctx) => {
    if (ctx.task.result?.state === "fail" && cluster !== undefined) console.error(cluster.tails());
    await cluster?.close();
    cluster = undefined;
  });

  const slowJob = { model: "tiny-gpt2", input: "keep going", parameters: { max_new_tokens: 200, seed: 7 } };
  const isRunning = (j: Record<string, unknown>): boolean => j.status === "running" && (j.progress as number) > 0;

  it("requeues a killed miner's job after the lease and the other miner completes it (attempt 2, one result)", async () => {
    const c = (cluster = await Cluster.start());
    // rig-a stops producing tokens after 20 (still heartbeating): it holds the job until it is killed.
    const m1 = await c.startMiner({ name: "rig-a", fakeTokensPerSecond: 40, env: { AITBC_MINER_FAKE_ENGINE_HANG_AFTER_TOKENS: "20" } });
    const jobId = await c.submit(slowJob);
    const running = await c.waitForJob(jobId, isRunning, "running with progress");
    expect(running).toMatchObject({ attempt: 1, miner_id: m1.minerId });
    // A second (faster) miner joins while rig-a holds the job; it must not get the job yet.
    const m2 = await c.startMiner({ name: "rig-b", fakeTokensPerSecond: 400 });
    expect(await c.job(jobId)).toMatchObject({ status: "running", attempt: 1, miner_id: m1.minerId });
    await m1.proc.kill("SIGKILL");

    const done = await c.waitForJob(jobId, (j) => j.status === "completed", "completed", 40_000);
    expect(done).toMatchObject({ status: "completed", attempt: 2, miner_id: m2.minerId });

    const events = await c.events(jobId);
    const changes = events.filter((e) => e.event !== "snapshot" && e.event !== "progress").map((e) => e.event);
    expect(changes.filter((e) => e === "completed")).toHaveLength(1);
    expect(changes.filter((e) => e === "requeued")).toHaveLength(1);
    expect(changes.indexOf("requeued")).toBeLessThan(changes.indexOf("completed"));

    const download = await c.api<{ output: string }>("GET", `/v1/jobs/${jobId}/download`);
    expect(download.status).toBe(200);
    expect(download.body.output.length).toBeGreaterThan(0);
  });

  it.each(["SIGKILL", "SIGTERM"] as const)("resumes the same attempt when the coordinator is stopped (%s) and restarted within the lease", async (signal) => {
    const c = (cluster = await Cluster.start());
    const m = await c.startMiner({ name: "steady", fakeTokensPerSecond: 40 });

    const jobId = await c.submit(slowJob);
    const running = await c.waitForJob(jobId, isRunning, "running with progress");
    expect(running).toMatchObject({ attempt: 1, miner_id: m.minerId });

    await c.coordinator!.kill(signal);
    await c.startCoordinator();
    // The miner comes back on its own and the new coordinator resumes its lease.
    const coordinator = c.coordinator!;
    const hello = await waitForLog(coordinator, (l) => l.msg === "miner connected" && l.name === "steady");
    expect(hello).toMatchObject({ resumed: 1, refused: 0, minerId: m.minerId });

    const done = await c.waitForJob(jobId, (j) => j.status === "completed", "completed", 40_000);
    expect(done).toMatchObject({ status: "completed", attempt: 1, miner_id: m.minerId });
    const changes = (await c.events(jobId)).map((e) => e.event);
    expect(changes).not.toContain("requeued");
    expect(changes.filter((e) => e === "completed")).toHaveLength(1);
    expect(m.proc.running).toBe(true);
    // The miner takes new work on the new coordinator (a SIGTERM's drain does not outlive the restart).
    const next = await c.submit({ ...slowJob, parameters: { max_new_tokens: 5, seed: 8 } });
    expect(await c.waitForJob(next, (j) => j.status === "completed", "completed")).toMatchObject({ miner_id: m.minerId });
  });

  it("requeues at once, without waiting for the lease, when a miner restarts without the job it held", async () => {
    // A long lease: only the restarted miner's hello can give the job back this soon.
    const c = (cluster = await Cluster.start({ AITBC_COORDINATOR_SCHEDULER_LEASE_TTL: "60s" }));
    const m = await c.startMiner({ name: "phoenix", fakeTokensPerSecond: 20 });
    const jobId = await c.submit(slowJob);
    await c.waitForJob(jobId, isRunning, "running with progress");
    await m.proc.kill("SIGKILL");

    const again = await c.startMiner({ name: "phoenix", fakeTokensPerSecond: 400 });
    expect(again.minerId).toBe(m.minerId);
    const done = await c.waitForJob(jobId, (j) => j.status === "completed", "completed", 40_000);
    expect(done).toMatchObject({ attempt: 2, miner_id: m.minerId });
    const requeued = (await c.events(jobId)).filter((e) => e.event === "requeued");
    expect(requeued).toHaveLength(1);
    expect(requeued[0]!.data).toMatchObject({ reason: "miner_restarted", attempt: 1 });
  });
});

async function waitForLog(
  proc: { logs(): Record<string, unknown>[]; running: boolean; output: string },
  match: (l: Record<string, unknown>) => boolean,
  timeoutMs = 20_000,
): Promise<Record<string, unknown>> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const line = proc.logs().find(match);
    if (line !== undefined) return line;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`log line not found; output tail:\n${proc.output.slice(-2000)}`);
}
