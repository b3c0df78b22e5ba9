import { afterEach, beforeAll, describe, expect, it } from "vitest";
import { checkInvariants } from "../reliability/invariants.js";
import { Cluster, assertBuilt, type SseEvent } from "./cluster.js";

/**
 * Losing processes mid-job. A miner killed with SIGKILL: its lease runs out, the reaper requeues
 * the job and the other miner finishes it as attempt 2, with exactly one committed result. The
 * coordinator killed with SIGKILL and restarted on the same data dir within the lease: the miner
 * reconnects, resumes its lease and the same attempt finishes. Both with the fake engine and with
 * the real one (OnnxEngine on tiny-gpt2); each ends with the delivery invariants on the store, and
 * a job that lived through a fault delivers what the same job (same prompt, same seed) delivers
 * without one.
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

  it("requeues a killed miner's job after the lease and the other miner completes it (attempt 2, one result, the output it has without the fault)", async () => {
    const c = (cluster = await Cluster.start());
    // rig-a stops producing tokens after 20 (still heartbeating): it holds the job until it is killed.
    const m1 = await c.startMiner({ name: "rig-a", fakeTokensPerSecond: 40, env: { AITBC_MINER_FAKE_ENGINE_HANG_AFTER_TOKENS: "20" } });
    // No seed given: the coordinator fixes one at submit, and every attempt must use it.
    const job = { model: "tiny-gpt2", input: "keep going", parameters: { max_new_tokens: 200 } };
    const jobId = await c.submit(job);
    const running = await c.waitForJob(jobId, isRunning, "running with progress");
    expect(running).toMatchObject({ attempt: 1, miner_id: m1.minerId });
    const seed = (running.parameters as { seed: number }).seed;
    // A second (faster) miner joins while rig-a holds the job; it must not get the job yet.
    const m2 = await c.startMiner({ name: "rig-b", fakeTokensPerSecond: 400 });
    expect(await c.job(jobId)).toMatchObject({ status: "running", attempt: 1, miner_id: m1.minerId });
    await m1.proc.kill("SIGKILL");

    const done = await c.waitForJob(jobId, (j) => j.status === "completed", "completed", 40_000);
    expect(done).toMatchObject({ status: "completed", attempt: 2, miner_id: m2.minerId, parameters: { seed } });

    const events = await c.events(jobId);
    const changes = events.filter((e) => e.event !== "snapshot" && e.event !== "progress").map((e) => e.event);
    expect(changes.filter((e) => e === "completed")).toHaveLength(1);
    expect(changes.filter((e) => e === "requeued")).toHaveLength(1);
    expect(changes.indexOf("requeued")).toBeLessThan(changes.indexOf("completed"));

    const output = await downloadOutput(c, jobId);
    const reference = await sameJobWithoutFault(c, job, seed);
    expect(output).toBe(reference.output);
    expect(reference.job).toMatchObject({ attempt: 1, miner_id: m2.minerId });

    await c.stop();
    const report = checkInvariants(c.dataDir, [jobId, reference.id]);
    expect(report.violations).toEqual([]);
    expect(report).toMatchObject({ requeues: 1, assignments: 3, byStatus: { completed: 2 } });
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

    await c.stop();
    const report = checkInvariants(c.dataDir, [jobId, next]);
    expect(report.violations).toEqual([]);
    expect(report).toMatchObject({ requeues: 0, assignments: 2, byStatus: { completed: 2 } });
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

    await c.stop();
    expect(checkInvariants(c.dataDir, [jobId]).violations).toEqual([]);
  });

  describe("with the real engine (OnnxEngine, tiny-gpt2 on the CPU)", () => {
    // tiny-gpt2 decodes over a thousand tokens a second here, so a run of 1000 tokens lasts under
    // a second: each fault is dealt on the job's first progress event (sent every 10 ms), early in
    // the run. Sampled, not greedy, so the output depends on the seed the coordinator fixed.
    const job = { model: "tiny-gpt2", input: "keep going", parameters: { max_new_tokens: 1000, temperature: 0.9, top_k: 50 } };
    const progressEvery = { AITBC_MINER_MINER_PROGRESS_INTERVAL: "10ms" };

    it("a miner SIGKILLed mid-run: requeued after the lease, finished by another miner as attempt 2 with the output the job has without the fault", async () => {
      const c = (cluster = await Cluster.start());
      const jobId = await c.submit(job);
      const seed = ((await c.job(jobId)).parameters as { seed: number }).seed;
      // The miner's process is registered at spawn, before it is seen connected: the kill can come first.
      const fault = onFirstProgress(c, jobId, () => c.miners.get("onnx-a")!.child.kill("SIGKILL"));
      await fault.subscribed;
      const a = await c.startMiner({ name: "onnx-a", env: progressEvery });
      const progressAtKill = await fault.fired;
      // Killed mid-run: the job had produced tokens and was not finished.
      expect(progressAtKill).toBeGreaterThan(0);
      expect(progressAtKill).toBeLessThan(100);
      await a.proc.exited;
      const b = await c.startMiner({ name: "onnx-b", env: progressEvery });

      const events = await fault.stream;
      expect(events.at(-1)?.event).toBe("completed");
      const done = await c.job(jobId);
      expect(done).toMatchObject({ status: "completed", attempt: 2, miner_id: b.minerId });
      const requeued = events.filter((e) => e.event === "requeued");
      expect(requeued.map((e) => e.data)).toMatchObject([{ attempt: 1, miner_id: a.minerId, reason: "lease_expired" }]);

      const output = await downloadOutput(c, jobId);
      const reference = await sameJobWithoutFault(c, job, seed);
      expect(reference.job).toMatchObject({ attempt: 1, miner_id: b.minerId });
      expect(output).toBe(reference.output);
      // Sampling may draw the end-of-text token before max_new_tokens: the count is the fault-free run's.
      const tokens = completionTokens(done);
      expect(tokens).toBe(completionTokens(reference.job));
      console.log(
        `real engine, miner SIGKILLed at ${progressAtKill}% of ${job.parameters.max_new_tokens} tokens: requeued once (lease_expired), ` +
          `completed at attempt 2 by the other miner, ${tokens} tokens, output (${output.length} chars) equal to the fault-free run`,
      );

      await c.stop();
      const report = checkInvariants(c.dataDir, [jobId, reference.id]);
      expect(report.violations).toEqual([]);
      expect(report).toMatchObject({ requeues: 1, assignments: 3, byStatus: { completed: 2 } });
    });

    it("the coordinator SIGKILLed mid-run and restarted within the lease: the same attempt finishes, with the output the job has without the fault", async () => {
      const c = (cluster = await Cluster.start());
      const jobId = await c.submit(job);
      const seed = ((await c.job(jobId)).parameters as { seed: number }).seed;
      let killedAt = 0;
      const fault = onFirstProgress(c, jobId, () => {
        c.coordinator!.child.kill("SIGKILL");
        killedAt = Date.now();
      });
      // The stream ends with the coordinator it was reading from.
      fault.stream.catch(() => undefined);
      await fault.subscribed;
      const m = await c.startMiner({ name: "onnx-steady", env: progressEvery });
      const progressAtKill = await fault.fired;
      expect(progressAtKill).toBeGreaterThan(0);
      expect(progressAtKill).toBeLessThan(100);
      await c.coordinator!.exited;
      await c.startCoordinator();
      const hello = await waitForLog(c.coordinator!, (l) => l.msg === "miner connected" && l.name === "onnx-steady");
      expect(hello).toMatchObject({ resumed: 1, refused: 0, minerId: m.minerId });

      const done = await c.waitForJob(jobId, (j) => j.status === "completed", "completed", 40_000);
      expect(done).toMatchObject({ attempt: 1, miner_id: m.minerId });
      // The engine was still generating when the coordinator died: it finished after the kill.
      const finished = m.proc.logs().find((l) => l.msg === "job completed" && l.jobId === jobId);
      expect(finished?.time as number).toBeGreaterThan(killedAt);
      const changes = (await c.events(jobId)).map((e) => e.event);
      expect(changes).not.toContain("requeued");
      expect(changes.filter((e) => e === "completed")).toHaveLength(1);

      const output = await downloadOutput(c, jobId);
      const reference = await sameJobWithoutFault(c, job, seed);
      expect(reference.job).toMatchObject({ attempt: 1, miner_id: m.minerId });
      expect(output).toBe(reference.output);
      expect(completionTokens(done)).toBe(completionTokens(reference.job));
      console.log(
        `real engine, coordinator SIGKILLed at ${progressAtKill}% of ${job.parameters.max_new_tokens} tokens: the engine finished ${(finished!.time as number) - killedAt} ms after the kill, ` +
          `the lease resumed, completed at attempt 1, output (${output.length} chars) equal to the fault-free run`,
      );

      await c.stop();
      const report = checkInvariants(c.dataDir, [jobId, reference.id]);
      expect(report.violations).toEqual([]);
      expect(report).toMatchObject({ requeues: 0, assignments: 2, byStatus: { completed: 2 } });
    });
  });
});

/** The completed job's generated token count (a positive integer). */
function completionTokens(job: Record<string, unknown>): number {
  const n = (job.result as { usage?: { completion_tokens?: unknown } } | null)?.usage?.completion_tokens;
  expect(n).toSatisfy((v: unknown) => Number.isInteger(v) && (v as number) > 0);
  return n as number;
}

async function downloadOutput(c: Cluster, jobId: string): Promise<string> {
  const download = await c.api<{ output: string }>("GET", `/v1/jobs/${jobId}/download`);
  expect(download.status).toBe(200);
  expect(download.body.output.length).toBeGreaterThan(0);
  return download.body.output;
}

/** The same job (same prompt, the seed the first one was given) submitted again and run with no fault. */
async function sameJobWithoutFault(
  c: Cluster,
  job: { model: string; input: string; parameters: Record<string, unknown> },
  seed: number,
): Promise<{ id: string; job: Record<string, unknown>; output: string }> {
  const id = await c.submit({ ...job, parameters: { ...job.parameters, seed } });
  const done = await c.waitForJob(id, (j) => j.status === "completed", "the fault-free run completed", 40_000);
  return { id, job: done, output: await downloadOutput(c, id) };
}

/**
 * Follows the job's event stream from before its miner starts; on the first live progress event
 * calls `act` in the same tick (so a kill lands as early in the run as can be seen) and resolves
 * `fired` with the progress then. `stream` is every event until the stream ends.
 */
function onFirstProgress(c: Cluster, jobId: string, act: () => void): { subscribed: Promise<void>; fired: Promise<number>; stream: Promise<SseEvent[]> } {
  let subscribe: () => void = () => undefined;
  let fire: (progress: number) => void = () => undefined;
  const subscribed = new Promise<void>((resolve) => (subscribe = resolve));
  const fired = new Promise<number>((resolve) => (fire = resolve));
  let acted = false;
  const stream = c.events(jobId, 90_000, (e) => {
    if (e.event === "snapshot") subscribe();
    if (e.event === "progress" && !acted) {
      acted = true;
      act();
      fire(e.data.progress as number);
    }
  });
  return { subscribed, fired, stream };
}

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
