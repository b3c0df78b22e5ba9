import { afterEach, beforeAll, describe, expect, it } from "vitest";
import { assertBuilt, sleep, waitFor } from "../e2e/cluster.js";
import { readEventLogs } from "./event-log.js";
import { checkInvariants } from "./invariants.js";
import { RELIABILITY_SCHEDULER, Rig } from "./rig.js";

/**
 * Fault injection, one fault per test, real processes (coordinator, fake-engine miners behind
 * test-controlled TCP proxies). Each test ends by stopping everything and checking the delivery
 * invariants on the SQLite file and result files (invariants.ts).
 */
// Real processes on a shared 2-core CI box: generous limits, the waits inside have their own deadlines.
describe("reliability: single faults", { timeout: 120_000 }, () => {
  let rig: Rig | undefined;
  const accepted = new Set<string>();

  beforeAll(() => assertBuilt());

  afterEach(async (ctx) => {
    if (ctx.task.result?.state === "fail" && rig !== undefined) console.error(await rig.failureReport(ctx.task.name));
    await rig?.close();
    rig = undefined;
    accepted.clear();
  });

  async function submit(r: Rig, body: Record<string, unknown>): Promise<string> {
    const id = await r.cluster.submit({ model: "tiny-gpt2", ...body });
    accepted.add(id);
    r.op(`submitted ${id}`);
    return id;
  }

  async function finish(r: Rig): Promise<ReturnType<typeof checkInvariants>> {
    await r.stopAll();
    const report = checkInvariants(r.cluster.dataDir, accepted);
    expect(report.violations).toEqual([]);
    return report;
  }

  const isRunning = (j: Record<string, unknown>): boolean => j.status === "running" && (j.progress as number) > 0;
  const TERMINAL = new Set(["completed", "failed", "cancelled", "timed_out", "expired"]);

  it("a job that crashes every miner ends failed after max_attempts; the other jobs complete", async () => {
    const r = (rig = await Rig.start({ AITBC_COORDINATOR_SCHEDULER_MAX_ATTEMPTS: "2" }));
    // One miner's engine dies (the miner stops), the other's process exits, both after 20 tokens;
    // short jobs (8 tokens) never get there.
    await r.startMiner({ name: "crashes", tokensPerSecond: 100, env: { AITBC_MINER_FAKE_ENGINE_CRASH_AFTER_TOKENS: "20" } });
    await r.startMiner({ name: "exits", tokensPerSecond: 100, env: { AITBC_MINER_FAKE_ENGINE_EXIT_AFTER_TOKENS: "20" } });
    let watching = true;
    let restarts = 0;
    // The test plays supervisor: a miner that went down is started again.
    const supervisor = (async () => {
      while (watching) {
        for (const m of r.miners.values()) {
          if (!m.proc.running && watching) {
            restarts++;
            await r.restartMiner(m.name, false);
          }
        }
        await sleep(100);
      }
    })();
    try {
      const poison = await submit(r, { input: "poison", parameters: { max_new_tokens: 60, seed: 1 } });
      const others = [];
      for (let i = 0; i < 3; i++) others.push(await submit(r, { input: `fine ${i}`, parameters: { max_new_tokens: 8, seed: i } }));

      const failed = await r.cluster.waitForJob(poison, (j) => TERMINAL.has(j.status as string), "terminal", 40_000);
      expect(failed).toMatchObject({ status: "failed", attempt: 2 });
      for (const id of others) {
        expect(await r.cluster.waitForJob(id, (j) => TERMINAL.has(j.status as string), "terminal", 30_000)).toMatchObject({ status: "completed" });
      }
      expect(restarts).toBeGreaterThanOrEqual(1);
    } finally {
      watching = false;
      await supervisor;
    }
    const report = await finish(r);
    expect(report.byStatus).toEqual({ failed: 1, completed: 3 });
  });

  it("a miner blackholed past its lease: job requeued and finished once by another miner, the late result refused", async () => {
    const r = (rig = await Rig.start());
    const slow = await r.startMiner({ name: "cut-off", tokensPerSecond: 20 });
    const id = await submit(r, { input: "partitioned", parameters: { max_new_tokens: 40, seed: 3 } });
    const cutOffId = r.cluster.minerId("cut-off");
    await r.cluster.waitForJob(id, isRunning, "running with progress");
    slow.proxy.setMode({ kind: "blackhole" });
    r.op("blackhole cut-off");
    await r.startMiner({ name: "rescuer", tokensPerSecond: 200 });
    const rescuerId = r.cluster.minerId("rescuer");

    const done = await r.cluster.waitForJob(id, (j) => TERMINAL.has(j.status as string), "terminal", 30_000);
    expect(done).toMatchObject({ status: "completed", attempt: 2, miner_id: rescuerId });
    // The cut-off miner finished attempt 1 behind the partition; heal and let its frames arrive.
    await waitFor(`miner cut-off finished attempt 1`, () => Promise.resolve(slow.proc.output.includes('"msg":"job completed"')), (v) => v, 10_000);
    slow.proxy.setMode({ kind: "pass" });
    r.op("heal cut-off");
    // Its late attempt-1 result is refused: either as a stale result frame, or its lease is
    // refused at the reconnect's hello (the miner then drops the job).
    await waitFor(
      "the late result refused",
      () =>
        Promise.resolve(
          r.coordinatorLogs("result received").some((l) => l.jobId === id && l.attempt === 1 && l.outcome === "stale") ||
            r.coordinatorLogs("miner connected").some((l) => l.minerId === cutOffId && (l.refused as number) > 0),
        ),
      (v) => v,
      15_000,
    );
    expect(await r.cluster.job(id)).toMatchObject({ status: "completed", attempt: 2, miner_id: rescuerId });
    const report = await finish(r);
    expect(report.requeues).toBe(1);
  });

  it("the coordinator SIGKILLed mid-job and restarted after one lease TTL, its miner cut off: requeued once after the grace, finished once as attempt 2", async () => {
    const r = (rig = await Rig.start());
    const leaseTtlMs = Number.parseInt(RELIABILITY_SCHEDULER.AITBC_COORDINATOR_SCHEDULER_LEASE_TTL!, 10);
    const stranded = await r.startMiner({ name: "stranded", tokensPerSecond: 20 });
    const strandedId = r.cluster.minerId("stranded");
    const id = await submit(r, { input: "outlives its coordinator", parameters: { max_new_tokens: 60, seed: 11 } });
    expect(await r.cluster.waitForJob(id, isRunning, "running with progress")).toMatchObject({ attempt: 1, miner_id: strandedId });

    // The miner cannot come back: its link is partitioned before the coordinator dies.
    stranded.proxy.setMode({ kind: "blackhole" });
    r.op("blackhole stranded");
    await r.cluster.coordinator!.kill("SIGKILL");
    const downAt = Date.now();
    r.op("coordinator SIGKILL");
    // Down for two lease TTLs: the last renewal was before the kill, so the lease is long expired.
    await sleep(2 * leaseTtlMs);
    const restartedAt = Date.now();
    await r.cluster.startCoordinator();
    r.op("coordinator restarted");
    await r.startMiner({ name: "rescuer", tokensPerSecond: 200 });
    const rescuerId = r.cluster.minerId("rescuer");

    const done = await r.cluster.waitForJob(id, (j) => TERMINAL.has(j.status as string), "terminal", 30_000);
    expect(done).toMatchObject({ status: "completed", attempt: 2, miner_id: rescuerId });
    const events = await r.cluster.events(id);
    const changes = events.filter((e) => e.event !== "snapshot" && e.event !== "progress" && e.event !== "token" && e.event !== "text_restart");
    const requeued = changes.filter((e) => e.event === "requeued");
    expect(requeued).toHaveLength(1);
    expect(requeued[0]!.data).toMatchObject({ attempt: 1, miner_id: strandedId, reason: "lease_expired" });
    // The reaper waited out the grace (one TTL from the restart) although the lease had expired
    // while the coordinator was down: a lower bound, which only a missing grace can break.
    const requeuedAt = Date.parse(requeued[0]!.data.at as string);
    expect(requeuedAt).toBeGreaterThanOrEqual(restartedAt + leaseTtlMs);
    expect(changes.map((e) => e.event)).toEqual(["queued", "assigned", "running", "requeued", "assigned", "running", "completed"]);

    // Healed, the stranded miner reconnects holding attempt 1: refused at its hello.
    stranded.proxy.setMode({ kind: "pass" });
    r.op("heal stranded");
    const hello = await waitFor(
      "the stranded miner's hello on the new coordinator",
      () => Promise.resolve(r.coordinatorLogs("miner connected").find((l) => l.minerId === strandedId)),
      (l) => l !== undefined,
      15_000,
    );
    expect(hello).toMatchObject({ resumed: 0, refused: 1 });
    expect(await r.cluster.job(id)).toMatchObject({ status: "completed", attempt: 2, miner_id: rescuerId });
    const report = await finish(r);
    expect(report.requeues).toBe(1);
    expect(report.assignments).toBe(2);
    console.log(
      `coordinator restart after the lease: down ${restartedAt - downAt} ms (lease TTL ${leaseTtlMs} ms); requeued once, ${requeuedAt - restartedAt} ms after the restart began; ` +
        `completed at attempt ${done.attempt as number}; the stranded miner's late lease refused`,
    );
  });

  it("a link delayed less than the lease: no requeue, the same attempt finishes", async () => {
    const r = (rig = await Rig.start());
    // Each way: a round trip of 800 ms, more than two heartbeats (600 ms here) — the kind of link
    // a miner used to take for dead after two unanswered pings — and under the 1500 ms lease.
    const DELAY_MS = 400;
    const m = await r.startMiner({ name: "laggy", tokensPerSecond: 30 });
    m.proxy.setMode({ kind: "delay", ms: DELAY_MS });
    r.op(`delay laggy ${DELAY_MS}ms`);
    const id = await submit(r, { input: "slow link", parameters: { max_new_tokens: 45, seed: 4 } });
    const done = await r.cluster.waitForJob(id, (j) => TERMINAL.has(j.status as string), "terminal", 30_000);
    expect(done).toMatchObject({ status: "completed", attempt: 1, miner_id: r.cluster.minerId("laggy") });
    const report = await finish(r);
    expect(report.requeues).toBe(0);
    expect(report.assignments).toBe(1);

    // The delay was real. Seen by the coordinator: between committing the assignment and the
    // miner's started frame, the assign went down the link and started came back up, each held
    // at least DELAY_MS (a lower bound only a missing delay breaks; Date.now() is whole ms).
    const events = readEventLogs(r.cluster.dataDir).get(id)!;
    const assignedAt = events.find((e) => e.type === "assigned")!.at;
    const runningAt = events.find((e) => e.type === "running")!.at;
    expect(runningAt - assignedAt).toBeGreaterThanOrEqual(2 * DELAY_MS - 1);
    // Seen by the proxy: the job's traffic (started, progress and heartbeats, the result) crossed
    // it while delayed, every chunk held the full delay.
    const up = m.proxy.delayed.filter((c) => c.dir === "toUpstream");
    const down = m.proxy.delayed.filter((c) => c.dir === "toClient");
    expect(up.length).toBeGreaterThanOrEqual(3);
    expect(down.length).toBeGreaterThanOrEqual(1);
    const held = m.proxy.delayed.map((c) => (c.forwardedAt ?? Number.POSITIVE_INFINITY) - c.receivedAt);
    expect(Math.min(...held)).toBeGreaterThanOrEqual(DELAY_MS);
    console.log(
      `link delayed ${DELAY_MS} ms each way: ${up.length} chunks up and ${down.length} down held back, assign → started ${runningAt - assignedAt} ms at the coordinator; ` +
        `no requeue, completed at attempt ${done.attempt as number}`,
    );
  });

  it("a run past timeout_seconds while heartbeating ends timed_out and the miner stops it", async () => {
    const r = (rig = await Rig.start());
    const m = await r.startMiner({ name: "hangs", tokensPerSecond: 50, env: { AITBC_MINER_FAKE_ENGINE_HANG_AFTER_TOKENS: "3" } });
    const id = await submit(r, { input: "hang", timeout_seconds: 1, parameters: { max_new_tokens: 50, seed: 5 } });
    const done = await r.cluster.waitForJob(id, (j) => TERMINAL.has(j.status as string), "terminal", 20_000);
    expect(done).toMatchObject({ status: "timed_out", attempt: 1 });
    expect(done.error).toMatchObject({ code: "timed_out" });
    // The miner's only slot is free again: it stopped the hung run. A job that stays under the
    // hang point completes on it.
    const next = await submit(r, { input: "after", parameters: { max_new_tokens: 2, seed: 6 } });
    expect(await r.cluster.waitForJob(next, (j) => TERMINAL.has(j.status as string), "terminal", 20_000)).toMatchObject({
      status: "completed",
      miner_id: r.cluster.minerId("hangs"),
    });
    expect(m.proc.running).toBe(true);
    const told =
      r.coordinatorLogs("told miner to stop").some((l) => l.jobId === id && l.reason === "timed_out") ||
      r.coordinatorLogs("attempt failed").some((l) => l.jobId === id && l.code === "timed_out");
    expect(told).toBe(true);
    const report = await finish(r);
    expect(report.byStatus).toEqual({ timed_out: 1, completed: 1 });
  });

  it("a job no miner can ever match expires after the queue TTL; a matching one completes", async () => {
    const r = (rig = await Rig.start({ AITBC_COORDINATOR_SCHEDULER_QUEUE_TTL: "1s" }));
    await r.startMiner({ name: "cpu-only", tokensPerSecond: 200 });
    const unmatched = await submit(r, { input: "needs an a100", requirements: { gpu_type: "a100" }, parameters: { max_new_tokens: 4 } });
    const fine = await submit(r, { input: "any", parameters: { max_new_tokens: 4 } });
    const expired = await r.cluster.waitForJob(unmatched, (j) => TERMINAL.has(j.status as string), "terminal", 20_000);
    expect(expired).toMatchObject({ status: "expired", attempt: 0 });
    expect(expired.error).toMatchObject({ code: "expired" });
    expect(await r.cluster.waitForJob(fine, (j) => TERMINAL.has(j.status as string), "terminal")).toMatchObject({ status: "completed" });
    const report = await finish(r);
    expect(report.byStatus).toEqual({ expired: 1, completed: 1 });
  });
});
