import type { AddressInfo } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { WebSocket, WebSocketServer } from "ws";
import { silentLogger } from "../../src/common/logger.js";
import { FrameBudget } from "../../src/coordinator/gateway/frame-budget.js";
import { MinerLink } from "../../src/coordinator/gateway/miner-link.js";
import type { MinerFrame } from "../../src/protocol/frames.js";

/** A MinerLink on a real WebSocket (port 0), its handler held back on the frames the test chooses. */
async function linked(onFrame: (f: MinerFrame) => Promise<void>): Promise<{ client: WebSocket; link: MinerLink; close: () => Promise<void> }> {
  const server = new WebSocketServer({ port: 0, host: "127.0.0.1" });
  await new Promise<void>((resolve) => server.once("listening", resolve));
  const accepted = new Promise<MinerLink>((resolve) => {
    server.once("connection", (socket) => {
      const now = Date.now();
      resolve(
        new MinerLink({
          socket,
          log: silentLogger(),
          budget: new FrameBudget({ frameRate: 1000, frameBurst: 1000, byteRate: 1e9, byteBurst: 1e9 }, now),
          maxQueued: 100,
          pingIntervalMs: 60_000,
          maxMissedPongs: 3,
          helloTimeoutMs: 60_000,
          now: () => Date.now(),
          onFrame,
          onFailure: () => undefined,
          onClose: () => undefined,
          onOverBudget: () => undefined,
        }),
      );
    });
  });
  const client = new WebSocket(`ws://127.0.0.1:${(server.address() as AddressInfo).port}`);
  await new Promise<void>((resolve, reject) => {
    client.once("open", resolve);
    client.once("error", reject);
  });
  const link = await accepted;
  return {
    client,
    link,
    close: async () => {
      client.close();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

const started = (jobId: string): string => JSON.stringify({ type: "started", job_id: jobId, attempt: 1, lease_token: `lt_${jobId}` });
const progress = (jobId: string, tokens: number): string =>
  JSON.stringify({ type: "progress", job_id: jobId, attempt: 1, lease_token: `lt_${jobId}`, tokens, max_tokens: 10, tokens_per_s: 1 });

function waitUntil(check: () => boolean): Promise<void> {
  return new Promise((resolve) => {
    const t = setInterval(() => {
      if (check()) {
        clearInterval(t);
        resolve();
      }
    }, 5);
  });
}

describe("MinerLink frame order", () => {
  let close: (() => Promise<void>) | undefined;
  afterEach(async () => {
    await close?.();
    close = undefined;
  });

  it("handles one job's frames in order, another job's without waiting for them, and pulls without waiting for jobs", async () => {
    const handled: string[] = [];
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    const l = await linked(async (f) => {
      const name = "job_id" in f ? `${f.type}:${f.job_id}` : f.type;
      // Job A's first frame is held (as a result waiting on its upload and commit would be).
      if (name === "started:job_a") await held;
      handled.push(name);
    });
    close = l.close;
    l.client.send(started("job_a"));
    l.client.send(progress("job_a", 1));
    l.client.send(started("job_b"));
    l.client.send(JSON.stringify({ type: "pull", free_slots: 1 }));
    await waitUntil(() => handled.length === 2);
    // Job B and the pull went past job A, which is still held; A's progress waits behind A.
    expect(handled).toEqual(["started:job_b", "pull"]);
    let jobsHandled = false;
    void l.link.jobFramesHandled().then(() => (jobsHandled = true));
    await new Promise((r) => setTimeout(r, 50));
    expect(jobsHandled).toBe(false);
    release();
    await l.link.drained();
    expect(handled).toEqual(["started:job_b", "pull", "started:job_a", "progress:job_a"]);
    expect(jobsHandled).toBe(true);
  });

  it("a job's first frame waits for the frames naming no job before it (the hello first)", async () => {
    const handled: string[] = [];
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    const l = await linked(async (f) => {
      if (f.type === "pull") await held;
      handled.push("job_id" in f ? `${f.type}:${f.job_id}` : f.type);
    });
    close = l.close;
    l.client.send(JSON.stringify({ type: "pull", free_slots: 1 }));
    l.client.send(started("job_a"));
    await new Promise((r) => setTimeout(r, 50));
    expect(handled).toEqual([]);
    release();
    await waitUntil(() => handled.length === 2);
    expect(handled).toEqual(["pull", "started:job_a"]);
  });

  it("invalid frames after a valid one close the connection although its handling ends after them", async () => {
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    const l = await linked(async (f) => {
      if (f.type === "pull") await held;
    });
    close = l.close;
    const closed = new Promise<number>((resolve) => l.client.once("close", (code) => resolve(code)));
    const errors: { fatal: boolean }[] = [];
    l.client.on("message", (d: Buffer) => errors.push(JSON.parse(d.toString()) as { fatal: boolean }));
    l.client.send(JSON.stringify({ type: "pull", free_slots: 1 }));
    l.client.send("not a frame");
    await waitUntil(() => errors.length === 1);
    // The pull was sent before the invalid frame: its handling, ending now, does not end their row.
    release();
    await l.link.drained();
    l.client.send("not a frame");
    l.client.send("not a frame");
    expect(await closed).toBe(1008);
    expect(errors.map((e) => e.fatal)).toEqual([false, false, true]);
  });
});
