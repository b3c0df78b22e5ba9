import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { WebSocket } from "ws";
import { expectProblem, startApi, submit, type ApiHarness } from "../coordinator/api-harness.js";
import { closeRawAgent, expectWellFormed, rawRequest } from "./raw-http.js";

/**
 * The auth matrix of the coordinator: every client endpoint refuses a missing, malformed,
 * revoked or miner key with 401 problem+json; the miner gateway refuses a client key at the
 * upgrade; and one tenant never sees another tenant's jobs (404 on every job endpoint, absent
 * from list and history).
 */
let h: ApiHarness & { key: string };
let globex: string;
let minerKey: string;
let revokedClient: string;
let revokedMiner: string;
let wsUrl: string;
let acmeDone: string;
let globexQueued: string;
let globexDone: string;

beforeAll(async () => {
  h = await startApi({ "limits.requests_per_minute": 100_000, "limits.requests_per_hour": 100_000 });
  wsUrl = `${h.url.replace(/^http/, "ws")}/v1/miners/connect`;
  globex = (await h.newKey("globex")).key;
  minerKey = (await h.newKey("acme", "miner")).key;
  const rc = await h.newKey("acme");
  const rm = await h.newKey("acme", "miner");
  expect(await h.coordinator.store.revokeKey(rc.id, Date.now())).toBe(true);
  expect(await h.coordinator.store.revokeKey(rm.id, Date.now())).toBe(true);
  revokedClient = rc.key;
  revokedMiner = rm.key;
  acmeDone = await submit(h);
  await h.complete(acmeDone, "acme output");
  globexQueued = await submit(h, {}, globex);
  globexDone = await submit(h, {}, globex);
  await h.complete(globexDone, "globex output");
});

afterAll(async () => {
  closeRawAgent();
  await h.stop();
});

const ENDPOINTS: { method: string; route: () => string; body?: () => { type: string; data: string } }[] = [
  { method: "GET", route: () => "/v1/jobs" },
  { method: "GET", route: () => "/v1/jobs/history?from=2000-01-01&to=2100-01-01" },
  { method: "POST", route: () => "/v1/jobs", body: () => ({ type: "application/json", data: JSON.stringify({ model: "gpt2", input: "x" }) }) },
  { method: "GET", route: () => `/v1/jobs/${acmeDone}` },
  { method: "DELETE", route: () => `/v1/jobs/${globexQueued}` },
  { method: "GET", route: () => `/v1/jobs/${acmeDone}/download` },
  { method: "GET", route: () => `/v1/jobs/${acmeDone}/events` },
  { method: "POST", route: () => "/v1/files", body: () => ({ type: "text/plain", data: "file text" }) },
  { method: "DELETE", route: () => "/v1/files/file_doesnotexist" },
  { method: "DELETE", route: () => `/v1/jobs/${globexDone}/result` },
  // The router decodes paths: an encoded route must still need a key.
  { method: "GET", route: () => "/%761/jobs" },
  { method: "GET", route: () => `/v1/jobs/%6aob_${acmeDone.slice(4)}` },
];

const BAD_AUTH: { name: string; header: () => string | undefined }[] = [
  { name: "no Authorization", header: () => undefined },
  { name: "empty", header: () => "" },
  { name: "scheme only", header: () => "Bearer" },
  { name: "Basic scheme", header: () => `Basic ${Buffer.from(`acme:${h.key}`).toString("base64")}` },
  { name: "no scheme", header: () => h.key },
  { name: "two tokens", header: () => `Bearer ${h.key} ${h.key}` },
  { name: "truncated key", header: () => `Bearer ${h.key.slice(0, -2)}` },
  { name: "unknown key", header: () => "Bearer aitbc_ck_0000000000000000000000000000000000000000" },
  { name: "miner key", header: () => `Bearer ${minerKey}` },
  { name: "revoked client key", header: () => `Bearer ${revokedClient}` },
];

describe("auth matrix: client API", () => {
  for (const auth of BAD_AUTH) {
    it(`${auth.name}: every client endpoint answers 401 problem+json`, async () => {
      for (const e of ENDPOINTS) {
        const value = auth.header();
        const body = e.body?.();
        const headers: Record<string, string> = { ...(value === undefined ? {} : { authorization: value }), ...(body === undefined ? {} : { "content-type": body.type }) };
        const res = await rawRequest(h.url, e.method, e.route(), headers, body?.data);
        expectWellFormed(res, `${e.method} ${e.route()} with ${auth.name}`);
        expect(res.status, `${e.method} ${e.route()} with ${auth.name}`).toBe(401);
        expect((JSON.parse(res.text) as { code: string }).code).toBe("unauthorized");
      }
    });
  }

  it("a 401 says how to authenticate (WWW-Authenticate: Bearer)", async () => {
    const res = await h.call("GET", "/v1/jobs", { key: null });
    expect(res.headers.get("www-authenticate")).toMatch(/^Bearer /);
    await expectProblem(res, 401, "unauthorized");
  });

  it("nothing was written by the refused requests", async () => {
    const counts = await h.coordinator.store.countByState();
    expect(Object.values(counts).reduce((a, b) => a + (b ?? 0), 0)).toBe(3);
    expect((await h.coordinator.store.getJobById(globexQueued))).toMatchObject({ status: "queued", cancelRequested: false });
  });

  it("the valid key works on the same endpoints (the matrix is not vacuous)", async () => {
    expect((await h.call("GET", "/v1/jobs")).status).toBe(200);
    expect((await h.call("GET", `/v1/jobs/${acmeDone}/download`)).status).toBe(200);
    expect((await rawRequest(h.url, "GET", "/%761/jobs", { authorization: `Bearer ${h.key}` })).status).toBe(200);
  });
});

describe("auth matrix: another tenant's jobs", () => {
  it("status, cancel, download and events of another tenant's job are 404 job_not_found", async () => {
    for (const id of [globexQueued, globexDone]) {
      await expectProblem(await h.call("GET", `/v1/jobs/${id}`), 404, "job_not_found");
      await expectProblem(await h.call("DELETE", `/v1/jobs/${id}`), 404, "job_not_found");
      await expectProblem(await h.call("GET", `/v1/jobs/${id}/download`), 404, "job_not_found");
      await expectProblem(await h.call("GET", `/v1/jobs/${id}/events`), 404, "job_not_found");
      await expectProblem(await h.call("DELETE", `/v1/jobs/${id}/result`), 404, "job_not_found");
    }
    // The refused cancel changed nothing; the owner still sees its jobs.
    expect(await h.coordinator.store.getJobById(globexQueued)).toMatchObject({ status: "queued", cancelRequested: false });
    expect((await h.call("GET", `/v1/jobs/${globexDone}/download`, { key: globex })).status).toBe(200);
    expect((await h.call("GET", `/v1/jobs/${globexQueued}`, { key: globex })).status).toBe(200);
  });

  it("list and history never show another tenant's jobs", async () => {
    const ids = async (route: string, key: string): Promise<string[]> => {
      const res = await h.call("GET", route, { key });
      expect(res.status).toBe(200);
      return ((await res.json()) as { jobs: { job_id: string }[] }).jobs.map((j) => j.job_id);
    };
    const range = "/v1/jobs/history?from=2000-01-01&to=2100-01-01&limit=100";
    expect((await ids("/v1/jobs?limit=100", h.key)).sort()).toEqual([acmeDone]);
    expect(await ids(range, h.key)).toEqual([acmeDone]);
    for (const status of ["queued", "completed"]) expect(await ids(`/v1/jobs?status=${status}&limit=100`, h.key)).not.toContain(globexQueued);
    expect((await ids("/v1/jobs?limit=100", globex)).sort()).toEqual([globexDone, globexQueued].sort());
    expect(await ids(range, globex)).toEqual([globexDone]);
  });
});

describe("auth matrix: miner gateway", () => {
  const upgrade = (header: string | undefined): Promise<number> =>
    new Promise((resolve, reject) => {
      const ws = new WebSocket(wsUrl, { headers: header === undefined ? {} : { authorization: header } });
      ws.once("open", () => {
        ws.terminate();
        resolve(101);
      });
      ws.once("unexpected-response", (_req, res) => {
        resolve(res.statusCode ?? 0);
        res.resume();
        ws.terminate();
      });
      ws.once("error", reject);
    });

  it("refuses a client key, a revoked or unknown miner key and no key with 401; accepts a miner key", async () => {
    expect(await upgrade(`Bearer ${h.key}`)).toBe(401);
    expect(await upgrade(undefined)).toBe(401);
    expect(await upgrade("Bearer")).toBe(401);
    expect(await upgrade(`Bearer ${revokedMiner}`)).toBe(401);
    expect(await upgrade("Bearer aitbc_mk_0000000000000000000000000000000000000000")).toBe(401);
    expect(await upgrade(`Bearer ${minerKey}`)).toBe(101);
  });

  it("a plain GET (no upgrade) is answered as problem+json: 401 without a miner key, 426 with one", async () => {
    const noKey = await rawRequest(h.url, "GET", "/v1/miners/connect");
    expectWellFormed(noKey, "plain GET without a key");
    expect(noKey.status).toBe(401);
    const withKey = await rawRequest(h.url, "GET", "/v1/miners/connect", { authorization: `Bearer ${minerKey}` });
    expectWellFormed(withKey, "plain GET with a miner key");
    expect(withKey.status).toBe(426);
    expect(JSON.parse(withKey.text) as Record<string, unknown>).toMatchObject({ code: "upgrade_required" });
  });

  it("a refused upgrade is answered as problem+json", async () => {
    const res = await rawRequest(h.url, "GET", "/v1/miners/connect", {
      authorization: `Bearer ${h.key}`,
      connection: "Upgrade",
      upgrade: "websocket",
      "sec-websocket-version": "13",
      "sec-websocket-key": Buffer.from("0123456789abcdef").toString("base64"),
    });
    expectWellFormed(res, "client key at the gateway");
    expect(res.status).toBe(401);
  });
});
