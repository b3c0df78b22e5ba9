import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { Writable } from "node:stream";
import { pino, type Logger } from "pino";
import { afterEach, describe, expect, it } from "vitest";
import { Coordinator } from "../../src/coordinator/coordinator.js";
import { loadCoordinatorConfig } from "../../src/coordinator/config.js";
import { MinerConnection } from "../../src/miner/connection.js";
import type { AssignFrame, ErrorFrame, HelloFrame, WelcomeFrame } from "../../src/protocol/frames.js";
import { waitFor } from "./cluster.js";
import { RawMiner, helloFrame } from "./raw-miner.js";

/**
 * Protocol 5: two miner processes with one key and one name. The second is refused while the
 * first's session is live (and the refusal is logged on both sides and counted); the same
 * process reconnecting replaces its session; a protocol 4 miner, which cannot tell, replaces it
 * as before. A real coordinator on port 0 (SQLite), raw WebSocket miners.
 */
interface Rig {
  coordinator: Coordinator;
  wsUrl: string;
  httpUrl: string;
  minerKey: string;
  clientKey: string;
  logs: Record<string, unknown>[];
  dir: string;
}

let rig: Rig | undefined;
afterEach(async () => {
  await rig?.coordinator.stop();
  if (rig !== undefined) rmSync(rig.dir, { recursive: true, force: true });
  rig = undefined;
});

/** A logger whose JSON lines land in `lines`. */
function capture(lines: Record<string, unknown>[]): Logger {
  return pino(
    { level: "info" },
    new Writable({
      write(chunk: Buffer, _enc, done) {
        for (const l of chunk.toString().split("\n")) if (l.trim() !== "") lines.push(JSON.parse(l) as Record<string, unknown>);
        done();
      },
    }),
  );
}

async function start(): Promise<Rig> {
  const dir = mkdtempSync(path.join(os.tmpdir(), "aitbc-dup-"));
  const config = loadCoordinatorConfig(undefined, {
    optional: true,
    env: {},
    overrides: { "server.port": 0, "storage.data_dir": dir, "scheduler.heartbeat": "500ms", "scheduler.lease_ttl": "5s" },
  });
  const logs: Record<string, unknown>[] = [];
  const coordinator = new Coordinator({ config, log: capture(logs) });
  const httpUrl = await coordinator.start();
  const store = coordinator.store;
  const minerKey = (await store.createKey("miner", "rig", "ops", Date.now())).key;
  const clientKey = (await store.createKey("client", "alice", "acme", Date.now())).key;
  rig = { coordinator, httpUrl, wsUrl: `${httpUrl.replace(/^http/, "ws")}/v1/miners/connect`, minerKey, clientKey, logs, dir };
  return rig;
}

function hello(name: string, instanceId: string | undefined, over: Partial<HelloFrame> = {}): HelloFrame {
  const h: HelloFrame = { ...helloFrame(name), ...over };
  if (instanceId === undefined) delete h.instance_id;
  else h.instance_id = instanceId;
  return h;
}

async function say(r: Rig, frame: HelloFrame): Promise<{ m: RawMiner; welcome?: WelcomeFrame; error?: ErrorFrame }> {
  const m = await RawMiner.open(r.wsUrl, r.minerKey);
  m.send(frame);
  const f = await m.next<WelcomeFrame | ErrorFrame>((x) => x.type === "welcome" || x.type === "error");
  return f.type === "welcome" ? { m, welcome: f } : { m, error: f };
}

async function duplicateCount(r: Rig): Promise<number> {
  const text = await (await fetch(`${r.httpUrl}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith("aitbc_duplicate_miners_total "));
  expect(line, "the metric is exported").toBeDefined();
  return Number(line!.split(" ")[1]);
}

describe("duplicate miners (protocol 5)", () => {
  it("refuses a second instance under the same key and name while the first is live, naming the clash; the first keeps working", async () => {
    const r = await start();
    expect(await duplicateCount(r)).toBe(0);
    const first = await say(r, hello("rig-a", "instance-aaaa"));
    expect(first.welcome).toMatchObject({ type: "welcome", protocol_version: 5 });

    const second = await say(r, hello("rig-a", "instance-bbbb"));
    expect(second.error).toMatchObject({ type: "error", code: "duplicate_miner", fatal: true });
    expect(second.error!.message).toContain('miner name "rig-a" is held by another instance (instance-aaaa)');
    expect(await second.m.waitClosed()).toMatchObject({ code: 4009, reason: "duplicate_miner" });
    expect(await duplicateCount(r)).toBe(1);
    const warn = r.logs.find((l) => l.msg === "duplicate miner refused: another instance holds this key and name");
    expect(warn).toMatchObject({ level: 40, name: "rig-a", instanceId: "instance-bbbb", holderInstanceId: "instance-aaaa" });
    // No "miner connected" for the refused one, and the first session was not replaced.
    expect(r.logs.filter((l) => l.msg === "miner connected")).toHaveLength(1);
    expect(first.m.closed).toBeUndefined();

    // The first still gets work.
    const submitted = await fetch(`${r.httpUrl}/v1/jobs`, {
      method: "POST",
      headers: { authorization: `Bearer ${r.clientKey}`, "content-type": "application/json" },
      body: JSON.stringify({ input: "hi", model: "tiny-gpt2" }),
    });
    expect(submitted.status).toBe(201);
    first.m.send({ type: "pull", free_slots: 1 });
    expect((await first.m.next<AssignFrame>((f) => f.type === "assign")).type).toBe("assign");

    // A different name under the same key is another miner: welcomed.
    expect((await say(r, hello("rig-b", "instance-bbbb"))).welcome).toBeDefined();

    // Once the first is gone, the second instance takes the name.
    first.m.close();
    await waitFor("the session closed", () => say(r, hello("rig-a", "instance-bbbb")).then((x) => x.welcome !== undefined), (ok) => ok, 10_000, 100);
    expect(await duplicateCount(r)).toBeGreaterThanOrEqual(1);
  });

  it("a live row held on another replica refuses; one naming this replica, which holds no such session (left by its previous run), is taken over", async () => {
    const r = await start();
    const first = await say(r, hello("rig-a", "instance-aaaa"));
    const minerId = first.welcome!.miner_id;
    first.m.close();
    await waitFor("closed", () => r.coordinator.store.listConnectedMiners(0), (l) => l.length === 0, 10_000, 20);
    const row = { id: minerId, keyId: "ignored", name: "rig-a", gpus: [], models: ["tiny-gpt2"], slots: 1 };
    // Another replica's live session (a PostgreSQL fleet): refused.
    expect((await r.coordinator.store.openMinerSession({ ...row, replica: "replica-b", instanceId: "instance-ghost" }, Date.now(), 0)).opened).toBe(true);
    expect((await say(r, hello("rig-a", "instance-cccc"))).error).toMatchObject({ code: "duplicate_miner" });
    expect((await say(r, hello("rig-a", "instance-cccc"))).error?.message).toContain("to replica replica-b");
    // This replica's own name on the row, but no session here: a leftover, taken over.
    expect((await r.coordinator.store.openMinerSession({ ...row, replica: r.coordinator.context.replica, instanceId: "instance-ghost" }, Date.now(), 0)).opened).toBe(true);
    expect((await say(r, hello("rig-a", "instance-cccc"))).welcome).toMatchObject({ miner_id: minerId });
    expect(await duplicateCount(r)).toBe(2);
  });

  it("the same instance reconnecting replaces its session, as before", async () => {
    const r = await start();
    const old = await say(r, hello("rig-a", "instance-aaaa"));
    expect(old.welcome).toBeDefined();
    const again = await say(r, hello("rig-a", "instance-aaaa"));
    expect(again.welcome).toMatchObject({ miner_id: old.welcome!.miner_id });
    expect(await old.m.waitClosed()).toMatchObject({ code: 4000 });
    expect(await duplicateCount(r)).toBe(0);
  });

  it("still welcomes protocol 4 miners (no instance id) with the welcome they know, and they replace a session as before", async () => {
    const r = await start();
    const v5 = await say(r, hello("rig-a", "instance-aaaa"));
    expect(v5.welcome).toBeDefined();
    const v4 = await say(r, hello("rig-a", undefined, { protocol_version: 4 }));
    expect(v4.welcome).toMatchObject({ type: "welcome", protocol_version: 4, replica: expect.any(String) as string });
    expect(Object.keys(v4.welcome!).sort()).toEqual(["heartbeat_ms", "lease_ttl_ms", "miner_id", "protocol_version", "refused", "replica", "resumed", "type"]);
    expect(await v5.m.waitClosed()).toMatchObject({ code: 4000 });
    // Protocol 3 is no longer spoken; a protocol 5 hello must carry its instance id.
    expect((await say(r, hello("rig-c", undefined, { protocol_version: 3 }))).error).toMatchObject({ code: "protocol_version", fatal: true });
    expect((await say(r, hello("rig-d", undefined))).error).toMatchObject({ code: "frame_invalid", fatal: true });
    expect(await duplicateCount(r)).toBe(0);
  });

  it("the refused miner warns and waits its long delay before trying again (no hot loop), then takes over once the name is free", async () => {
    const r = await start();
    const holder = await say(r, hello("rig-a", "instance-aaaa"));
    expect(holder.welcome).toBeDefined();
    const minerLogs: Record<string, unknown>[] = [];
    const conn = new MinerConnection({
      urls: [r.wsUrl],
      key: r.minerKey,
      log: capture(minerLogs),
      connectTimeoutMs: 5_000,
      duplicateRetryMs: 1_500,
      hello: () => hello("rig-a", "instance-cccc"),
      heartbeat: () => ({ type: "heartbeat", in_flight: [], free_slots: 1 }),
    });
    const refused: { code: string }[] = [];
    let attempts = 0;
    conn.on("refused", (e) => refused.push(e));
    conn.on("connecting", () => (attempts += 1));
    const welcomed = new Promise<WelcomeFrame>((resolve) => conn.once("welcome", resolve));
    conn.start();
    try {
      await waitFor("the refusal", () => Promise.resolve(refused.length), (n) => n >= 1, 10_000, 20);
      expect(refused[0]).toMatchObject({ code: "duplicate_miner" });
      expect(minerLogs.find((l) => l.msg === "coordinator refused hello: another miner process holds this name")).toMatchObject({ level: 40, code: "duplicate_miner" });
      // The ordinary backoff would have tried again within its first bound; this waits ≥ 750 ms.
      await new Promise((res) => setTimeout(res, 600));
      expect(attempts).toBe(1);
      holder.m.close();
      const w = await welcomed;
      expect(w.type).toBe("welcome");
      expect(await duplicateCount(r)).toBeGreaterThanOrEqual(1);
    } finally {
      await conn.close();
    }
  });
});
