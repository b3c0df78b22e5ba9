import { spawn, type ChildProcess } from "node:child_process";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { AckFrame, AssignFrame, WelcomeFrame } from "../../src/protocol/frames.js";
import { startApi, type ApiHarness } from "../coordinator/api-harness.js";
import { PG_URL, freshSchema, requirePostgres } from "../coordinator/pg-harness.js";
import { ROOT, freePort, waitFor } from "../e2e/cluster.js";
import { RawMiner, helloFrame, isAck, resultFrame } from "../e2e/raw-miner.js";
import { replicaSettings, startS3 } from "../s3/s3-server.js";

/**
 * The README's HAProxy example (config/haproxy.cfg) in front of two coordinator replicas on
 * PostgreSQL and S3 (a third server slot points nowhere, as a replica that is down): the client
 * API, an event stream and a miner's WebSocket all go through it; when one replica stops, the
 * balancer takes it out of rotation and the miner comes back through it to the other.
 */
let replicas: (ApiHarness & { key: string })[] = [];
let haproxy: ChildProcess;
let lb = "";
let minerKey = "";
let output = "";
const cleanups: (() => Promise<void>)[] = [];

beforeAll(async () => {
  await requirePostgres();
  const s3 = await startS3(["lb-results"]);
  cleanups.push(s3.close);
  const { schema, drop } = await freshSchema("lb");
  cleanups.push(drop);
  const settings = {
    ...replicaSettings(PG_URL, schema, s3.endpoint, "lb-results"),
    "limits.requests_per_minute": 100_000,
    "limits.requests_per_hour": 100_000,
    "scheduler.heartbeat": "300ms",
  };
  for (const name of ["lb-a", "lb-b"]) {
    const h = await startApi({ ...settings, "storage.replica": name });
    replicas.push(h);
  }
  minerKey = (await replicas[0]!.newKey("acme", "miner")).key;
  const port = await freePort();
  lb = `http://127.0.0.1:${port}`;
  haproxy = spawn("haproxy", ["-db", "-f", path.join(ROOT, "config", "haproxy.cfg")], {
    env: {
      ...process.env,
      AITBC_LB_BIND: `127.0.0.1:${port}`,
      AITBC_R1: new URL(replicas[0]!.url).host,
      AITBC_R2: new URL(replicas[1]!.url).host,
      AITBC_R3: `127.0.0.1:${await freePort()}`,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  haproxy.on("error", (err) => (output += `haproxy did not start: ${err.message} (install it: apt-get install haproxy; .ci/run does)\n`));
  haproxy.stdout!.on("data", (d: Buffer) => (output += d.toString()));
  haproxy.stderr!.on("data", (d: Buffer) => (output += d.toString()));
  await waitFor("haproxy answering", () => fetch(`${lb}/healthz`).then((r) => r.status), (s) => s === 200, 20_000);
  // Its health checks have taken the slot with no replica behind it out of rotation.
  await waitFor("r3 marked down", () => Promise.resolve(/r3 is DOWN/.test(output)), (v) => v, 20_000);
}, 60_000);

afterAll(async (ctx) => {
  if (ctx.tasks.some((t) => t.result?.state === "fail")) console.error(output);
  haproxy?.kill("SIGKILL");
  for (const h of replicas) await h.stop().catch(() => undefined);
  for (const c of cleanups.reverse()) await c();
  replicas = [];
});

const call = (method: string, route: string, body?: unknown): Promise<Response> =>
  fetch(`${lb}${route}`, {
    method,
    headers: { authorization: `Bearer ${replicas[0]!.key}`, ...(body === undefined ? {} : { "content-type": "application/json" }) },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    signal: AbortSignal.timeout(10_000),
  });

describe("HAProxy (config/haproxy.cfg) in front of replicas", () => {
  it("carries REST, an event stream and a miner WebSocket; a replica that stops leaves rotation and its miner comes back through the balancer", async () => {
    const model = "gpt2-lb";
    const wsUrl = `${lb.replace(/^http/, "ws")}/v1/miners/connect`;
    const first = await RawMiner.open(wsUrl, minerKey);
    first.send({ ...helloFrame("behind-lb"), models: [model] });
    const welcome = await first.next<WelcomeFrame>((f) => f.type === "welcome");
    const res = await call("POST", "/v1/jobs", { model, input: "through the balancer" });
    expect(res.status).toBe(201);
    const id = ((await res.json()) as { job_id: string }).job_id;
    const events = fetch(`${lb}/v1/jobs/${id}/events`, { headers: { authorization: `Bearer ${replicas[0]!.key}` } }).then((r) => r.text());
    first.send({ type: "pull", free_slots: 1 });
    const a = await first.next<AssignFrame>((f) => f.type === "assign" && f.job.job_id === id);
    first.send({ type: "started", job_id: id, attempt: a.attempt, lease_token: a.lease_token });
    first.send(resultFrame(a, "balanced"));
    expect(await first.next<AckFrame>(isAck(id, a.attempt))).toMatchObject({ status: "committed" });
    expect(await events).toContain("event: completed");
    expect(((await (await call("GET", `/v1/jobs/${id}/download`)).json()) as { output: string }).output).toBe("balanced");

    // The replica holding the miner stops: the balancer closes that miner's connection, and it reconnects through the balancer to the other.
    const holder = replicas.findIndex((h) => h.coordinator.gateway.miners().some((s) => s.name === "behind-lb"));
    expect(holder).toBeGreaterThanOrEqual(0);
    expect(welcome.replica).toBe(holder === 0 ? "lb-a" : "lb-b");
    await replicas[holder]!.coordinator.stop();
    await first.waitClosed();
    const other = replicas[1 - holder]!;
    const second = await waitFor(
      "the miner back through the balancer",
      async () => {
        const m = await RawMiner.open(wsUrl, minerKey);
        m.send({ ...helloFrame("behind-lb"), models: [model] });
        return { m, w: await m.next<WelcomeFrame>((f) => f.type === "welcome" || f.type === "error" as never, 3_000) };
      },
      (x) => x.w.type === "welcome",
      20_000,
      200,
    );
    expect(second.w.replica).toBe(holder === 0 ? "lb-b" : "lb-a");
    expect(other.coordinator.gateway.miners().map((s) => s.name)).toContain("behind-lb");
    // The client API answers through the balancer without the stopped replica.
    for (let i = 0; i < 5; i++) expect((await call("GET", `/v1/jobs/${id}`)).status).toBe(200);
    second.m.close();
  });
});
