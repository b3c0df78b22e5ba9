import { afterEach, beforeAll, describe, expect, it } from "vitest";
import { Prng } from "../../src/common/prng.js";
import { assertBuilt, sleep, waitFor } from "../e2e/cluster.js";
import { checkInvariants } from "./invariants.js";
import { Rig } from "./rig.js";

/**
 * Races and crashes under load, real processes: cancel racing completion, the coordinator
 * SIGKILLed during a storm of idempotent submits, and a chaos run. Each test ends by stopping
 * everything and checking the delivery invariants (invariants.ts).
 */
// Real processes on a shared 2-core CI box: generous limits, the waits inside have their own deadlines.
describe("reliability: races and chaos", { timeout: 120_000 }, () => {
  let rig: Rig | undefined;

  beforeAll(() => assertBuilt());

  afterEach(async (ctx) => {
    if (ctx.task.result?.state === "fail" && rig !== undefined) console.error(rig.report());
    await rig?.close();
    rig = undefined;
  });

  const TERMINAL = new Set(["completed", "failed", "cancelled", "timed_out", "expired"]);

  /** Seeded, so a failing run can be replayed with the same choices. */
  function prng(seed: number): () => number {
    const p = new Prng(seed);
    return () => p.next();
  }

  /** POSTs until a 2xx, retrying network errors and 5xx with the same Idempotency-Key. */
  async function submitWithRetry(r: Rig, key: string, body: Record<string, unknown>, deadlineMs = 60_000): Promise<{ id: string; tries: number }> {
    const deadline = Date.now() + deadlineMs;
    let tries = 0;
    for (;;) {
      tries++;
      try {
        const res = await fetch(`${r.cluster.baseUrl}/v1/jobs`, {
          method: "POST",
          headers: { authorization: `Bearer ${r.cluster.clientKey}`, "content-type": "application/json", "idempotency-key": key },
          body: JSON.stringify({ model: "tiny-gpt2", ...body }),
          signal: AbortSignal.timeout(5_000),
        });
        const parsed = (await res.json()) as Record<string, unknown>;
        if (res.status >= 200 && res.status < 300) return { id: parsed.job_id as string, tries };
        if (res.status < 500 && res.status !== 429) throw new Error(`submit ${key} answered ${res.status}: ${JSON.stringify(parsed)}`);
      } catch (err) {
        if (err instanceof Error && err.message.startsWith("submit ")) throw err;
        // connection refused/reset while the coordinator is down: retry
      }
      if (Date.now() > deadline) throw new Error(`submit ${key}: no 2xx before the deadline`);
      await sleep(50);
    }
  }

  /** Polls GET /v1/jobs/:id for every id until all are terminal; returns the final views. */
  async function waitAllTerminal(r: Rig, ids: Iterable<string>, timeoutMs: number): Promise<Map<string, Record<string, unknown>>> {
    const final = new Map<string, Record<string, unknown>>();
    const pending = new Set(ids);
    await waitFor(
      "every job terminal",
      async () => {
        for (const id of [...pending]) {
          const j = await r.cluster.job(id);
          if (TERMINAL.has(j.status as string)) {
            final.set(id, j);
            pending.delete(id);
          }
        }
        return pending.size;
      },
      (n) => n === 0,
      timeoutMs,
      200,
    );
    return final;
  }

  it("cancel racing completion: each job ends in exactly one terminal state and a losing cancel is told 409", async () => {
    const r = (rig = await Rig.start());
    await r.startMiner({ name: "racer-a", tokensPerSecond: 50 });
    await r.startMiner({ name: "racer-b", tokensPerSecond: 50 });
    const rand = prng(7);
    const ids: string[] = [];
    for (let i = 0; i < 20; i++) ids.push(await r.cluster.submit({ model: "tiny-gpt2", input: `race ${i}`, parameters: { max_new_tokens: 10, seed: i } }));
    // Each job: once it runs, a DELETE after a random 0–300 ms (the run takes ~200 ms).
    const cancels = await Promise.all(
      ids.map(async (id) => {
        const delay = Math.floor(rand() * 300);
        await r.cluster.waitForJob(id, (j) => j.status === "running" || TERMINAL.has(j.status as string), "running", 30_000);
        await sleep(delay);
        const res = await r.cluster.api("DELETE", `/v1/jobs/${id}`);
        r.op(`DELETE ${id} after ${delay}ms → ${res.status}`);
        return { id, status: res.status, body: res.body };
      }),
    );
    const final = await waitAllTerminal(r, ids, 30_000);
    const tally: Record<string, number> = {};
    for (const c of cancels) {
      const end = final.get(c.id)!.status as string;
      tally[`${c.status}→${end}`] = (tally[`${c.status}→${end}`] ?? 0) + 1;
      if (c.status === 409) {
        // The cancel lost: the job had already finished, and the answer says so.
        expect(c.body).toMatchObject({ code: "job_finished", state: "completed" });
        expect(end).toBe("completed");
      } else {
        // The cancel was accepted: the job ends cancelled, never completed behind the client's back.
        expect([200, 202]).toContain(c.status);
        expect(end).toBe("cancelled");
      }
    }
    console.log(`cancel race outcomes (DELETE status → final state): ${JSON.stringify(tally)}`);
    await r.stopAll();
    const report = checkInvariants(r.cluster.dataDir, ids);
    expect(report.violations).toEqual([]);
    expect(report.jobs).toBe(20);
  });

  it("SIGKILL of the coordinator during a storm of idempotent submits: no accepted job lost, none duplicated", async () => {
    const r = (rig = await Rig.start());
    const clients = 8;
    const perClient = 6;
    const accepted = new Map<string, string>();
    let tries = 0;
    const storm = Promise.all(
      Array.from({ length: clients }, async (_, c) => {
        for (let k = 0; k < perClient; k++) {
          const key = `storm-${c}-${k}`;
          const res = await submitWithRetry(r, key, { input: `storm ${c} ${k}`, parameters: { max_new_tokens: 4, seed: k } });
          tries += res.tries;
          accepted.set(key, res.id);
        }
      }),
    );
    await waitFor("some submits accepted", () => Promise.resolve(accepted.size), (n) => n >= 8, 30_000, 10);
    await r.restartCoordinator();
    await storm;
    r.op(`storm done: ${accepted.size} keys accepted in ${tries} tries`);
    expect(accepted.size).toBe(clients * perClient);
    // A retry after the restart gets the same job back (the key is durable with the job).
    const again = await submitWithRetry(r, "storm-0-0", { input: "storm 0 0", parameters: { max_new_tokens: 4, seed: 0 } });
    expect(again.id).toBe(accepted.get("storm-0-0"));

    await r.stopAll();
    const report = checkInvariants(r.cluster.dataDir, accepted.values());
    expect(report.violations).toEqual([]);
    expect(report.jobs).toBe(new Set(accepted.values()).size);
    expect(report.jobs).toBe(accepted.size);
  });

  it("chaos: ~100 jobs, miners killed and restarted, links cut, the coordinator restarted twice: all terminal, invariants hold", async () => {
    const r = (rig = await Rig.start({ AITBC_COORDINATOR_SCHEDULER_MAX_ATTEMPTS: "6" }));
    const names = ["chaos-a", "chaos-b", "chaos-c"];
    for (const name of names) await r.startMiner({ name, tokensPerSecond: 60 });
    const rand = prng(2026);
    const accepted = new Map<string, string>();
    const faults: Record<string, number> = { miner_kill: 0, link_cut: 0, link_delay: 0, link_blackhole: 0, coordinator_restart: 0 };
    let submitting = true;

    // Clients: 4 submitters, 25 jobs each, retrying with an Idempotency-Key through restarts.
    const submitters = Promise.all(
      Array.from({ length: 4 }, async (_, c) => {
        for (let k = 0; k < 25; k++) {
          const key = `chaos-${c}-${k}`;
          const res = await submitWithRetry(r, key, { input: `chaos ${c} ${k}`, parameters: { max_new_tokens: 5 + Math.floor(rand() * 20), seed: k } });
          accepted.set(key, res.id);
          await sleep(Math.floor(rand() * 60));
        }
      }),
    ).finally(() => (submitting = false));

    // Faults while the clients submit, plus the two coordinator restarts at fixed points.
    let round = 0;
    while (submitting || round < 10) {
      round++;
      const pick = rand();
      const name = names[Math.floor(rand() * names.length)]!;
      const m = r.miners.get(name)!;
      if (round === 4 || round === 9) {
        await r.restartCoordinator();
        faults.coordinator_restart!++;
      } else if (pick < 0.45) {
        await r.killMiner(name);
        faults.miner_kill!++;
        await sleep(100 + Math.floor(rand() * 300));
        await r.restartMiner(name, false);
      } else if (pick < 0.65) {
        m.proxy.cut();
        r.op(`cut ${name}`);
        faults.link_cut!++;
      } else if (pick < 0.8) {
        // Longer than the lease: the job is requeued behind the partition, the late frames are refused.
        m.proxy.setMode({ kind: "blackhole" });
        r.op(`blackhole ${name}`);
        faults.link_blackhole!++;
        await sleep(1_800);
        m.proxy.setMode({ kind: "pass" });
        r.op(`heal ${name}`);
      } else {
        m.proxy.setMode({ kind: "delay", ms: 200 });
        r.op(`delay ${name} 200ms`);
        faults.link_delay!++;
        await sleep(300);
        m.proxy.setMode({ kind: "pass" });
      }
      await sleep(200 + Math.floor(rand() * 400));
    }
    await submitters;
    for (const m of r.miners.values()) {
      m.proxy.setMode({ kind: "pass" });
      if (!m.proc.running) await r.restartMiner(m.name, false);
    }
    r.op("chaos over");
    const final = await waitAllTerminal(r, accepted.values(), 60_000);
    await r.stopAll();
    const report = checkInvariants(r.cluster.dataDir, accepted.values());
    const injected = Object.values(faults).reduce((a, b) => a + b, 0);
    console.log(
      `chaos run: jobs=${report.jobs} accepted_keys=${accepted.size} faults=${injected} ${JSON.stringify(faults)} ` +
        `by_status=${JSON.stringify(report.byStatus)} requeues=${report.requeues} assignments=${report.assignments}`,
    );
    expect(report.violations).toEqual([]);
    expect(accepted.size).toBe(100);
    expect(report.jobs).toBe(100);
    expect(final.size).toBe(100);
    expect(faults.coordinator_restart).toBe(2);
    // Mostly completed: a job only fails when it lost every one of its attempts to faults.
    expect(report.byStatus.completed ?? 0).toBeGreaterThanOrEqual(90);
  });
});
