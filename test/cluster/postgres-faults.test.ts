import { connect, createServer, type Server, type Socket } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { silentLogger } from "../../src/common/logger.js";
import { loadCoordinatorConfig } from "../../src/coordinator/config.js";
import { Coordinator } from "../../src/coordinator/coordinator.js";
import { PostgresJobStore } from "../../src/coordinator/store/postgres/postgres-job-store.js";
import { expectProblem } from "../coordinator/api-harness.js";
import { PG_URL, freshSchema, requirePostgres } from "../coordinator/pg-harness.js";
import { freePort, waitFor } from "../e2e/cluster.js";
import { replicaSettings, startS3 } from "../s3/s3-server.js";

/**
 * A replica whose PostgreSQL goes away, or is not there when it starts: every API request is
 * answered 503 problem+json with Retry-After (never a 500, never a hang), /readyz says not ready,
 * and the replica serves again by itself when the database is back. The database is reached
 * through a TCP proxy the test takes down and brings back on the same port.
 */
class Gate {
  private server: Server | undefined;
  private readonly sockets = new Set<Socket>();

  constructor(
    readonly port: number,
    private readonly target: { host: string; port: number },
  ) {}

  async up(): Promise<void> {
    this.server = createServer((client) => {
      const upstream = connect(this.target.port, this.target.host);
      for (const s of [client, upstream]) {
        this.sockets.add(s);
        s.on("close", () => this.sockets.delete(s));
        s.on("error", () => s.destroy());
      }
      client.pipe(upstream).pipe(client);
      client.on("close", () => upstream.destroy());
      upstream.on("close", () => client.destroy());
    });
    await new Promise<void>((resolve) => this.server!.listen(this.port, "127.0.0.1", resolve));
  }

  /** Refuses new connections and cuts the open ones, as a database host that went away. */
  async down(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => (this.server === undefined ? resolve() : this.server.close(() => resolve())));
    this.server = undefined;
  }
}

let gate: Gate;
let coordinator: Coordinator;
let key = "";
let url = "";
const cleanups: (() => Promise<void>)[] = [];

const target = new URL(PG_URL);
const viaGate = (port: number): string => {
  const u = new URL(PG_URL);
  u.host = `127.0.0.1:${port}`;
  return u.toString();
};

async function get(path: string): Promise<Response> {
  // An answer must come, and soon: a hang fails here.
  return fetch(`${url}${path}`, { headers: { authorization: `Bearer ${key}` }, signal: AbortSignal.timeout(15_000) });
}

beforeAll(async () => {
  await requirePostgres();
  const s3 = await startS3(["aitbc-results"]);
  cleanups.push(s3.close);
  const { schema, drop } = await freshSchema("pgf");
  cleanups.push(drop);
  // The key is made straight in the database, before the replica starts.
  const direct = await PostgresJobStore.open({ url: PG_URL, schema });
  key = (await direct.createKey("client", "faults", "acme", Date.now())).key;
  await direct.close();
  gate = new Gate(await freePort(), { host: target.hostname, port: Number(target.port || 5432) });
  const config = loadCoordinatorConfig(undefined, {
    optional: true,
    env: {},
    overrides: {
      "server.port": 0,
      ...replicaSettings(viaGate(gate.port), schema, s3.endpoint, "aitbc-results"),
      "log.level": "silent",
    },
  });
  // Started while its database is unreachable.
  coordinator = new Coordinator({ config, log: silentLogger() });
  url = await coordinator.start();
  cleanups.push(() => coordinator.stop());
}, 60_000);

afterAll(async () => {
  await gate.down().catch(() => undefined);
  for (const c of cleanups.reverse()) await c();
});

describe("a replica and its PostgreSQL", () => {
  it("starts without its database: 503 with Retry-After and not ready, then serves once the database is reachable", async () => {
    const res = await get("/v1/jobs");
    const body = await expectProblem(res, 503, "unavailable");
    expect(res.headers.get("retry-after")).toBe("1");
    expect(body.detail).toMatch(/not ready|unavailable/);
    expect((await get("/readyz")).status).toBe(503);
    await gate.up();
    await waitFor("ready", async () => (await get("/readyz")).status, (s) => s === 200, 30_000);
    expect((await get("/v1/jobs")).status).toBe(200);
  });

  it("loses its database while serving: 503 problem+json for reads and submits, never a 500 or a hang; recovers by itself", async () => {
    const submitted = await fetch(`${url}/v1/jobs`, {
      method: "POST",
      headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
      body: JSON.stringify({ model: "gpt2", input: "before the outage" }),
    });
    expect(submitted.status).toBe(201);
    const id = ((await submitted.json()) as { job_id: string }).job_id;
    await gate.down();
    for (const path of ["/v1/jobs", `/v1/jobs/${id}`, "/v1/jobs/history?from=2020-01-01&to=2100-01-01"]) {
      const res = await get(path);
      await expectProblem(res, 503);
      expect(res.headers.get("retry-after")).not.toBeNull();
    }
    const refused = await fetch(`${url}/v1/jobs`, {
      method: "POST",
      headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
      body: JSON.stringify({ model: "gpt2", input: "during the outage" }),
      signal: AbortSignal.timeout(15_000),
    });
    await expectProblem(refused, 503);
    expect((await get("/readyz")).status).toBe(503);
    await gate.up();
    await waitFor("serving again", async () => (await get(`/v1/jobs/${id}`)).status, (s) => s === 200, 30_000);
    expect((await get("/readyz")).status).toBe(200);
  });
});
