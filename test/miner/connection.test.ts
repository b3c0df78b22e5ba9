import { createServer, type Socket } from "node:net";
import type { AddressInfo } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { Backoff } from "../../src/common/backoff.js";
import { silentLogger } from "../../src/common/logger.js";
import { MinerConnection } from "../../src/miner/connection.js";
import type { HelloFrame } from "../../src/protocol/frames.js";
import { FakeCoordinator } from "./fake-coordinator.js";

const hello = (): HelloFrame => ({
  type: "hello",
  protocol_version: 1,
  miner_name: "conn-test",
  version: "0.0.0",
  gpus: [],
  models: [],
  slots: 1,
  free_slots: 1,
  in_flight: [],
});

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

function connection(url: string | string[], key: string, connectTimeoutMs = 5_000): MinerConnection {
  const c = new MinerConnection({
    urls: Array.isArray(url) ? url : [url],
    key,
    log: silentLogger(),
    hello,
    heartbeat: () => ({ type: "heartbeat", in_flight: [], free_slots: 1 }),
    connectTimeoutMs,
    backoff: new Backoff({ baseMs: 20, maxMs: 50 }),
  });
  cleanups.push(() => c.close());
  return c;
}

describe("MinerConnection", () => {
  it("sends heartbeats at the interval the welcome names", async () => {
    const coordinator = await FakeCoordinator.start();
    cleanups.push(() => coordinator.close());
    coordinator.heartbeatMs = 100;
    const c = connection(`${coordinator.url}/v1/miners/connect`, coordinator.key);
    const welcomed = new Promise((resolve) => c.once("welcome", resolve));
    c.start();
    await welcomed;
    expect(c.ready).toBe(true);
    await coordinator.waitFor(() => coordinator.frames("heartbeat").length >= 3);
    expect(coordinator.frames("heartbeat")[0]).toEqual({ type: "heartbeat", in_flight: [], free_slots: 1 });
  });

  it("drops a connection from which nothing arrives for a lease TTL, and reconnects", async () => {
    const coordinator = await FakeCoordinator.start();
    cleanups.push(() => coordinator.close());
    coordinator.heartbeatMs = 100;
    coordinator.leaseTtlMs = 500;
    const c = connection(`${coordinator.url}/v1/miners/connect`, coordinator.key);
    let welcomes = 0;
    c.on("welcome", () => welcomes++);
    c.start();
    await coordinator.waitForType("heartbeat");
    // Stop reading on the coordinator's side: pings go unanswered, as with a dead host.
    coordinator.stopReading();
    await coordinator.waitFor((r) => r.conn === 2 && r.frame.type === "hello");
    await new Promise<void>((resolve) => (welcomes >= 2 ? resolve() : c.once("welcome", () => resolve())));
    expect(c.ready).toBe(true);
  });

  it("keeps a connection that goes quiet for several heartbeats but less than the lease TTL (a slow link)", async () => {
    const coordinator = await FakeCoordinator.start();
    cleanups.push(() => coordinator.close());
    coordinator.heartbeatMs = 100;
    coordinator.leaseTtlMs = 2_000;
    const c = connection(`${coordinator.url}/v1/miners/connect`, coordinator.key);
    let disconnects = 0;
    c.on("disconnected", () => disconnects++);
    c.start();
    await coordinator.waitForType("heartbeat");
    // Six heartbeats without a pong: two missed pongs dropped the link before.
    coordinator.stopReading();
    await new Promise((r) => setTimeout(r, 600));
    coordinator.resumeReading();
    const before = coordinator.frames("heartbeat").length;
    await coordinator.waitFor(() => coordinator.frames("heartbeat").length >= before + 3);
    expect(disconnects).toBe(0);
    expect(c.ready).toBe(true);
  });

  it("with several coordinator URLs, moves to the next one when a coordinator goes away", async () => {
    const one = await FakeCoordinator.start();
    const two = await FakeCoordinator.start();
    cleanups.push(() => two.close());
    const c = connection([`${one.url}/v1/miners/connect`, `${two.url}/v1/miners/connect`], one.key);
    const welcomed = new Promise((resolve) => c.once("welcome", resolve));
    c.start();
    await welcomed;
    expect(one.frames("hello")).toHaveLength(1);
    await one.close();
    await two.waitForType("hello");
    await new Promise<void>((resolve) => (c.ready ? resolve() : c.once("welcome", () => resolve())));
    expect(c.ready).toBe(true);
  });

  it("close() ends a stalled upgrade and stops reconnecting", async () => {
    const sockets: Socket[] = [];
    const stalled = createServer((s) => sockets.push(s));
    await new Promise<void>((resolve) => stalled.listen(0, "127.0.0.1", resolve));
    cleanups.push(async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => stalled.close(() => resolve()));
    });
    const port = (stalled.address() as AddressInfo).port;
    const c = connection(`ws://127.0.0.1:${port}/v1/miners/connect`, "k", 60_000);
    let attempts = 0;
    c.on("connecting", () => attempts++);
    c.start();
    while (sockets.length === 0) await new Promise((r) => setTimeout(r, 10));
    await c.close();
    await new Promise((r) => setTimeout(r, 150));
    expect(attempts).toBe(1);
    expect(c.ready).toBe(false);
  });
});
