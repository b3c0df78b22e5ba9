import { afterEach, beforeAll, describe, expect, it } from "vitest";
import { Cluster, assertBuilt, waitFor } from "../e2e/cluster.js";

/**
 * Liveness and secrets with real processes: a miner that is stopped (SIGSTOP: its socket stays
 * open, nothing answers) must stop counting as eligible within a few heartbeats, and come back
 * when continued; a key put in a query string never reaches the coordinator's log.
 */
describe("liveness and secrets (real processes)", { timeout: 120_000 }, () => {
  let cluster: Cluster | undefined;

  beforeAll(() => assertBuilt());

  afterEach(async (ctx) => {
    if (ctx.task.result?.state === "fail" && cluster !== undefined) console.error(cluster.tails());
    await cluster?.close();
    cluster = undefined;
  });

  const readyMiners = async (c: Cluster): Promise<number> => ((await (await fetch(`${c.baseUrl}/readyz`)).json()) as { miners: number }).miners;

  it("a SIGSTOPped miner is dropped after missing its pings and no longer counts as eligible; SIGCONT brings it back to work", async () => {
    const heartbeatMs = 300;
    const c = (cluster = await Cluster.start({ AITBC_COORDINATOR_SCHEDULER_HEARTBEAT: `${heartbeatMs}ms`, AITBC_COORDINATOR_GATEWAY_MAX_MISSED_PONGS: "2" }));
    const { proc } = await c.startMiner({ name: "sleeper", fakeTokensPerSecond: 200 });
    expect(await readyMiners(c)).toBe(1);
    const waiting = await c.submit({ model: "tiny-gpt2", input: "waits for the sleeper", priority: "low", parameters: { max_new_tokens: 4 } });
    await c.waitForJob(waiting, (j) => j.status === "completed", "completed before the stop");

    const stoppedAt = Date.now();
    proc.child.kill("SIGSTOP");
    try {
      await waitFor("the stopped miner dropped", () => readyMiners(c), (n) => n === 0, 15_000);
      const droppedMs = Date.now() - stoppedAt;
      const dropped = c.coordinator!.logs().find((l) => l.msg === "miner stopped answering pings: dropping the connection");
      expect(dropped).toBeDefined();
      const next = await c.submit({ model: "tiny-gpt2", input: "after the stop", parameters: { max_new_tokens: 4 } });
      expect(await c.job(next)).toMatchObject({ status: "queued", eligible_miners: 0 });
      console.log(`liveness: a SIGSTOPped miner dropped ${droppedMs} ms after the stop (heartbeat ${heartbeatMs} ms, max_missed_pongs 2)`);
      proc.child.kill("SIGCONT");
      await waitFor("the continued miner back", () => readyMiners(c), (n) => n === 1, 20_000);
      expect(await c.waitForJob(next, (j) => j.status === "completed", "completed after SIGCONT")).toMatchObject({ status: "completed" });
    } finally {
      proc.child.kill("SIGCONT");
    }
  });

  it("a key passed in a query string is never logged", async () => {
    const c = (cluster = await Cluster.start());
    const secret = c.clientKey;
    for (const q of [`?key=${secret}`, `?api_key=${encodeURIComponent(secret)}&limit=1`, `?access_token=${secret}`]) {
      const res = await fetch(`${c.baseUrl}/v1/jobs${q}`, { headers: { authorization: `Bearer ${secret}` } });
      expect(res.status).toBe(422); // unknown query parameters
    }
    await fetch(`${c.baseUrl}/healthz?token=${secret}`);
    // Probes are not logged at info; /openapi.json is, after the others: read the logs once it is.
    await fetch(`${c.baseUrl}/openapi.json?token=${secret}`);
    await waitFor("the requests logged", () => Promise.resolve(c.coordinator!.output.match(/"url":"\/openapi\.json\?/g)?.length ?? 0), (n) => n >= 1);
    const out = c.coordinator!.output;
    expect(out).toContain("/v1/jobs?key=[redacted]");
    const secretPart = secret.split("_").slice(3).join("_");
    expect(out).not.toContain(secret);
    expect(out).not.toContain(secretPart);
  });
});
