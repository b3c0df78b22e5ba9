import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { requirePostgres } from "../coordinator/pg-harness.js";
import { assertBuilt, sleep, waitFor } from "../e2e/cluster.js";
import { ReplicaCluster, type Replica } from "./replica-cluster.js";

/**
 * Nothing lost when replicas die under load: 3 coordinator replicas (child processes) on one real
 * PostgreSQL and a real S3-compatible server; 5 fake-engine miners spread over them (three dial
 * all replicas in their own order, two reach one replica through a TCP proxy and the others
 * directly after it); 4 clients submitting 120 jobs with Idempotency-Keys round-robin across the
 * replicas, moving to the next on a failure with the same key; a cancel sent through a replica
 * that does not hold the job's miner; one job followed over SSE on yet another replica (moving
 * on when that one dies, with Last-Event-ID). Mid-run the replica holding the most leases is
 * SIGKILLed, later a second one. Then the invariants are checked on the PostgreSQL tables and
 * the S3 objects.
 */
const TERMINAL = new Set(["completed", "failed", "cancelled", "timed_out", "expired"]);
let c: ReplicaCluster;

beforeAll(async () => {
  assertBuilt();
  await requirePostgres();
  c = await ReplicaCluster.start(3);
}, 120_000);

afterAll(async (ctx) => {
  if (ctx.tasks.some((t) => t.result?.state === "fail")) console.error(c.tails());
  await c?.close();
});

async function api(r: Replica, method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<Response> {
  return fetch(`${r.url}${path}`, {
    method,
    headers: { authorization: `Bearer ${c.clientKey}`, ...(body === undefined ? {} : { "content-type": "application/json" }), ...headers },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    signal: AbortSignal.timeout(10_000),
  });
}

/** POST through replica `start`, moving to the next replica with the same Idempotency-Key until a 2xx. */
async function submit(start: number, key: string, body: Record<string, unknown>): Promise<{ id: string; tries: number }> {
  for (let tries = 1; ; tries++) {
    const r = c.replicas[(start + tries - 1) % c.replicas.length]!;
    try {
      const res = await api(r, "POST", "/v1/jobs", { model: "tiny-gpt2", ...body }, { "idempotency-key": key });
      if (res.ok) return { id: ((await res.json()) as { job_id: string }).job_id, tries };
      if (res.status < 500) throw new Error(`submit ${key}: ${res.status} ${await res.text()}`);
    } catch (err) {
      if (err instanceof Error && err.message.startsWith("submit ")) throw err;
    }
    if (tries > 200) throw new Error(`submit ${key}: no replica accepted it`);
    await sleep(50);
  }
}

async function status(id: string): Promise<Record<string, unknown>> {
  for (const r of c.alive()) {
    try {
      const res = await api(r, "GET", `/v1/jobs/${id}`);
      if (res.ok) return (await res.json()) as Record<string, unknown>;
    } catch {
      // that replica is going down: ask the next
    }
  }
  throw new Error("no replica answered");
}

/** Follows a job's events, starting on `first` and moving to a live replica (Last-Event-ID) when one dies. */
async function follow(id: string, first: Replica): Promise<{ events: string[]; replicas: string[] }> {
  const events: string[] = [];
  const replicas: string[] = [];
  let last = 0;
  let r: Replica | undefined = first;
  for (let round = 0; round < 50 && r !== undefined; round++) {
    replicas.push(r.name);
    try {
      const res = await fetch(`${r.url}/v1/jobs/${id}/events`, { headers: { authorization: `Bearer ${c.clientKey}`, "last-event-id": String(last) } });
      const reader = res.body!.getReader();
      let buf = "";
      for (;;) {
        const { value, done } = (await reader.read()) as { value?: Uint8Array; done: boolean };
        if (done) break;
        buf += Buffer.from(value!).toString("utf8");
        let i: number;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const type = /^event: (.+)$/m.exec(block)?.[1];
          const seq = /^id: (\d+)$/m.exec(block)?.[1];
          if (seq !== undefined) last = Number(seq);
          if (type !== undefined) events.push(type);
          if (type !== undefined && TERMINAL.has(type)) return { events, replicas };
        }
      }
    } catch {
      // the replica died mid-stream
    }
    await sleep(200);
    r = c.alive().find((x) => x !== r) ?? c.alive()[0];
  }
  return { events, replicas };
}

describe("3 replicas on PostgreSQL and S3, two of them SIGKILLed under load", { timeout: 240_000 }, () => {
  it("loses nothing: every accepted job reaches exactly one terminal state, results match in S3, the cancel and the stream hold", async () => {
    const [r1, r2, r3] = c.replicas as [Replica, Replica, Replica];
    const all = [r1.wsUrl, r2.wsUrl, r3.wsUrl];
    c.startMiner("m1", all, 120);
    c.startMiner("m2", [r2.wsUrl, r3.wsUrl, r1.wsUrl], 120);
    c.startMiner("m3", [r3.wsUrl, r1.wsUrl, r2.wsUrl], 120);
    const p1 = await c.proxyTo(r1);
    const p2 = await c.proxyTo(r2);
    c.startMiner("m4", [p1.wsUrl, r2.wsUrl, r3.wsUrl], 120);
    c.startMiner("m5", [p2.wsUrl, r3.wsUrl, r1.wsUrl], 120);
    await waitFor("5 miners connected", async () => (await c.sql<{ n: number }>("SELECT COUNT(*)::int AS n FROM miners WHERE connected"))[0]!.n, (n) => n === 5, 30_000);

    // A long job to cancel, and a job to follow.
    const long = await submit(0, "long", { input: "to be cancelled", parameters: { max_new_tokens: 2000, seed: 1 } });
    const followed = await submit(1, "followed", { input: "followed on another replica", parameters: { max_new_tokens: 300, seed: 2 } });
    const stream = follow(followed.id, r3);

    const accepted = new Map<string, string>();
    let tries = 0;
    const clients = Promise.all(
      [0, 1, 2, 3].map(async (client) => {
        for (let k = 0; k < 30; k++) {
          const key = `c${client}-${k}`;
          const res = await submit(client + k, key, { input: `job ${client} ${k}`, parameters: { max_new_tokens: 10 + ((client * 7 + k) % 25), seed: k } });
          accepted.set(key, res.id);
          tries += res.tries;
          await sleep(20);
        }
      }),
    );

    // The cancel, sent through a replica that does not hold the long job's miner.
    await waitFor("the long job running", () => status(long.id), (j) => j.status === "running", 30_000);
    const holder = (await c.sql<{ replica: string }>("SELECT m.replica FROM jobs j JOIN miners m ON m.id = j.miner_id WHERE j.id = $1", [long.id]))[0]!.replica;
    const via = c.replicas.find((r) => r.name !== holder)!;
    const cancel = await api(via, "DELETE", `/v1/jobs/${long.id}`);
    expect(cancel.status).toBe(202);

    // Kill the replica holding the most leases, then, later, a second one.
    const kills: { replica: string; at: number; leases: number; recoveredMs?: number }[] = [];
    const killBusiest = async (): Promise<void> => {
      const leases = await c.leasesByReplica();
      const victim = c.alive().sort((a, b) => (leases.get(b.name) ?? 0) - (leases.get(a.name) ?? 0))[0]!;
      const held = await c.sql<{ id: string }>("SELECT id FROM miners WHERE connected AND replica = $1", [victim.name]);
      await victim.proc.kill("SIGKILL");
      const at = Date.now();
      const kill: (typeof kills)[number] = { replica: victim.name, at, leases: leases.get(victim.name) ?? 0 };
      kills.push(kill);
      // Recovered when every miner it held is connected to a live replica.
      await waitFor(
        `the miners of ${victim.name} back on other replicas`,
        async () => {
          const ids = held.map((h) => h.id);
          if (ids.length === 0) return true;
          const rows = await c.sql<{ n: number }>("SELECT COUNT(*)::int AS n FROM miners WHERE id = ANY($1) AND connected AND replica <> $2", [ids, victim.name]);
          return rows[0]!.n === ids.length;
        },
        (ok) => ok,
        30_000,
      );
      kill.recoveredMs = Date.now() - at;
    };
    await waitFor("40 jobs accepted", () => Promise.resolve(accepted.size), (n) => n >= 40, 60_000);
    await killBusiest();
    await waitFor("80 jobs accepted", () => Promise.resolve(accepted.size), (n) => n >= 80, 60_000);
    await killBusiest();
    await clients;

    const ids = [...accepted.values(), long.id, followed.id];
    const final = new Map<string, Record<string, unknown>>();
    await waitFor(
      "every accepted job terminal",
      async () => {
        for (const id of ids) {
          if (final.has(id)) continue;
          const j = await status(id);
          if (TERMINAL.has(j.status as string)) final.set(id, j);
        }
        return final.size;
      },
      (n) => n === ids.length,
      120_000,
      250,
    );
    const followedEvents = await stream;

    // Rate limits count once across the replicas: one key's remaining count goes down by one per request, whichever replica answers.
    const remaining: number[] = [];
    for (const r of [...c.alive(), ...c.alive(), ...c.alive()]) remaining.push(Number((await api(r, "GET", "/v1/jobs?limit=1")).headers.get("ratelimit-remaining")));
    for (let i = 1; i < remaining.length; i++) expect(remaining[i]).toBe(remaining[i - 1]! - 1);

    await Promise.all([...c.miners.values()].map((m) => m.kill("SIGKILL")));
    await Promise.all(c.alive().map((r) => r.proc.kill("SIGKILL")));
    const report = await c.checkInvariants(ids);
    expect(report.violations).toEqual([]);
    expect(report.jobs).toBe(ids.length);
    expect(new Set(accepted.values()).size).toBe(accepted.size);
    expect(final.get(long.id)).toMatchObject({ status: "cancelled" });
    expect(followedEvents.events.at(-1)).toBe("completed");
    expect(kills).toHaveLength(2);
    const requeued = await c.sql<{ reason: string; n: number }>("SELECT data->>'reason' AS reason, COUNT(*)::int AS n FROM job_events WHERE type = 'requeued' GROUP BY 1");
    const byStatus = report.byStatus;
    console.log(
      `3 replicas, 2 SIGKILLed: ${ids.length} jobs (${accepted.size} keys accepted in ${tries} tries), by status ${JSON.stringify(byStatus)}; ` +
        `kills ${JSON.stringify(kills.map((k) => ({ replica: k.replica, leases: k.leases, miners_back_ms: k.recoveredMs })))}; ` +
        `requeues ${JSON.stringify(Object.fromEntries(requeued.map((r) => [r.reason, r.n])))}; assignments ${report.assignments}; ` +
        `S3 objects ${report.objects}; the followed job's stream on ${followedEvents.replicas.join(" → ")} saw ${followedEvents.events.length} events ending ${followedEvents.events.at(-1)}; ` +
        `the cancel through ${via.name} (miner on ${holder}) → ${final.get(long.id)!.status as string}`,
    );
  });
});
