/**
 * One process of bench/fleet.ts's simulated fleet: BENCH_FLEET_COUNT light protocol clients (a
 * `ws` socket each, no engine) speaking the miner protocol to a list of replicas. Each says hello
 * as a one-slot CPU miner of tiny-gpt2, pulls after its welcome, heartbeats (a frame and a
 * WebSocket ping) every `heartbeat_ms` the welcome names, and on an `assign` records the time it
 * arrived, sends `started`, then at once a small `result`, and pulls again: the work is nothing,
 * so what is measured is the coordinator. A dropped connection moves it to the next URL of its
 * list after a jittered backoff, as the real miner does (src/miner/connection.ts, Backoff with
 * the miner's default 0.5 s … 30 s bounds).
 *
 * Talks to its parent over IPC: sends {t:"status"} every 250 ms and {t:"assigns"} batches;
 * receives {t:"mark", replica} (remember which miners are on that replica now, and report when
 * each is welcomed elsewhere and pulling) and {t:"stop"}.
 *
 * Environment: BENCH_FLEET_URLS (comma-separated ws URLs), BENCH_FLEET_KEY, BENCH_FLEET_COUNT,
 * BENCH_FLEET_PREFIX (miner name prefix), BENCH_FLEET_OFFSET (index of this process's first
 * miner in the fleet: miner i starts on URL i mod n).
 */
import { createHash } from "node:crypto";
import { WebSocket } from "ws";
import { Backoff } from "../src/common/backoff.js";
import type { AssignFrame, CoordinatorFrame, MinerFrame } from "../src/protocol/frames.js";
import { PROTOCOL_VERSION } from "../src/protocol/version.js";

export type ParentMessage = { t: "mark"; replica: string } | { t: "stop" };
export type ChildMessage =
  | { t: "status"; busy: number; ackMs: number[]; welcomed: number; byReplica: Record<string, number>; heartbeats: number; assigns: number; refused: number; marked: number; moved: number; movedAtMax: number; /** When each marked miner was welcomed elsewhere (epoch ms). */ moveMs: number[] }
  | { t: "assigns"; list: [string, number][] };

const urls = (process.env.BENCH_FLEET_URLS ?? "").split(",").filter((u) => u !== "");
const key = process.env.BENCH_FLEET_KEY ?? "";
const count = Number(process.env.BENCH_FLEET_COUNT ?? 0);
const prefix = process.env.BENCH_FLEET_PREFIX ?? "fleet";
const offset = Number(process.env.BENCH_FLEET_OFFSET ?? 0);
/** Upgrades in flight at once while the fleet first connects (spreads the ramp). */
const RAMP_CONCURRENCY = 64;
/** One id for every simulated miner of this process: a reconnect replaces its session (protocol 5). */
const INSTANCE_ID = `bench-fleet-${process.pid}`;
/** The real miner's default [coordinator] connect_timeout. */
const CONNECT_TIMEOUT_MS = 10_000;
const now = (): number => performance.timeOrigin + performance.now();

let heartbeats = 0;
let assignsSeen = 0;
let refused = 0;
let stopping = false;
let pendingAssigns: [string, number][] = [];
/** Results sent and not yet acknowledged: job id → when sent. */
const awaitingAck = new Map<string, number>();
let ackMs: number[] = [];
/** The kill under way: when it began, and the miners that were on that replica then. */
let mark: { replica: string; at: number; miners: Set<SimMiner>; backAt: Map<SimMiner, number> } | undefined;

function send(m: ChildMessage): void {
  if (process.connected) process.send?.(m);
}

class SimMiner {
  ws: WebSocket | undefined;
  replica: string | undefined;
  private next: number;
  private heartbeat: NodeJS.Timeout | undefined;
  private reconnect: NodeJS.Timeout | undefined;
  private readonly backoff = new Backoff({ baseMs: 500, maxMs: 30_000 });

  constructor(
    readonly name: string,
    first: number,
  ) {
    this.next = first;
  }

  /** Resolves once the connection is welcomed or has ended (for the ramp's concurrency). */
  connect(): Promise<void> {
    return new Promise((settled) => {
      if (stopping) return settled();
      const url = urls[this.next % urls.length]!;
      const ws = new WebSocket(url, { headers: { authorization: `Bearer ${key}` }, handshakeTimeout: CONNECT_TIMEOUT_MS });
      this.ws = ws;
      // As the real miner: the upgrade and the welcome within connect_timeout, or drop and redial.
      const welcomeTimer = setTimeout(() => ws.terminate(), CONNECT_TIMEOUT_MS);
      ws.on("open", () =>
        this.send({ type: "hello", protocol_version: PROTOCOL_VERSION, instance_id: INSTANCE_ID, miner_name: this.name, version: "0.0.0-bench", gpus: [], models: ["tiny-gpt2"], slots: 1, free_slots: 1, in_flight: [] }),
      );
      ws.on("message", (d: Buffer) => {
        const f = JSON.parse(d.toString()) as CoordinatorFrame;
        if (f.type === "welcome") {
          clearTimeout(welcomeTimer);
          this.backoff.reset();
          this.replica = f.replica ?? url;
          clearInterval(this.heartbeat);
          this.heartbeat = setInterval(() => {
            if (ws.readyState !== WebSocket.OPEN) return;
            ws.ping();
            this.send({ type: "heartbeat", in_flight: [], free_slots: 1 });
            heartbeats++;
          }, f.heartbeat_ms);
          this.send({ type: "pull", free_slots: 1 });
          if (mark !== undefined && mark.miners.has(this) && !mark.backAt.has(this) && this.replica !== mark.replica) mark.backAt.set(this, now());
          settled();
        } else if (f.type === "assign") this.work(f);
        else if (f.type === "ack" && f.of === "result") {
          const sent = awaitingAck.get(f.job_id);
          if (sent !== undefined) ackMs.push(now() - sent);
          awaitingAck.delete(f.job_id);
        }
      });
      ws.on("unexpected-response", () => {
        refused++;
        ws.terminate();
      });
      ws.on("error", () => undefined);
      ws.on("close", () => {
        clearTimeout(welcomeTimer);
        clearInterval(this.heartbeat);
        if (this.ws === ws) {
          this.ws = undefined;
          this.replica = undefined;
        }
        settled();
        if (stopping) return;
        this.next = (this.next + 1) % urls.length;
        this.reconnect = setTimeout(() => void this.connect(), this.backoff.next());
      });
    });
  }

  private work(a: AssignFrame): void {
    pendingAssigns.push([a.job.job_id, now()]);
    assignsSeen++;
    this.send({ type: "started", job_id: a.job.job_id, attempt: a.attempt, lease_token: a.lease_token });
    const output = `ok ${a.job.job_id}`;
    awaitingAck.set(a.job.job_id, now());
    this.send({
      type: "result",
      job_id: a.job.job_id,
      attempt: a.attempt,
      lease_token: a.lease_token,
      output,
      output_bytes: Buffer.byteLength(output),
      sha256: createHash("sha256").update(output).digest("hex"),
      finish_reason: "length",
      usage: { prompt_tokens: 3, completion_tokens: 5 },
      timing: { time_to_first_token_ms: 1, tokens_per_second: 50, total_ms: 1 },
    });
    this.send({ type: "pull", free_slots: 1 });
  }

  send(f: MinerFrame): void {
    if (this.ws?.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(f));
  }

  stop(): void {
    clearInterval(this.heartbeat);
    clearTimeout(this.reconnect);
    this.ws?.terminate();
  }
}

const miners = Array.from({ length: count }, (_, i) => new SimMiner(`${prefix}-${offset + i}`, offset + i));

function status(): void {
  const byReplica: Record<string, number> = {};
  let welcomed = 0;
  for (const m of miners) {
    if (m.replica === undefined) continue;
    welcomed++;
    byReplica[m.replica] = (byReplica[m.replica] ?? 0) + 1;
  }
  const moveMs = mark === undefined ? [] : [...mark.backAt.values()];
  send({ t: "status", busy: awaitingAck.size, ackMs, welcomed, byReplica, heartbeats, assigns: assignsSeen, refused, marked: mark?.miners.size ?? 0, moved: mark?.backAt.size ?? 0, movedAtMax: Math.max(0, ...moveMs), moveMs });
  ackMs = [];
  if (pendingAssigns.length > 0) {
    send({ t: "assigns", list: pendingAssigns });
    pendingAssigns = [];
  }
}

process.on("message", (m: ParentMessage) => {
  if (m.t === "mark") {
    mark = { replica: m.replica, at: now(), miners: new Set(miners.filter((x) => x.replica === m.replica)), backAt: new Map() };
  } else if (m.t === "stop") {
    stopping = true;
    for (const x of miners) x.stop();
    status();
    process.disconnect();
    setTimeout(() => process.exit(0), 200).unref();
  }
});
process.on("disconnect", () => {
  // The parent went away (killed, or failed): leave nothing behind.
  stopping = true;
  for (const x of miners) x.stop();
  setTimeout(() => process.exit(0), 200).unref();
});

const statusTimer = setInterval(status, 250);
statusTimer.unref();

// The ramp: RAMP_CONCURRENCY connects in flight at a time; later reconnects are on their own.
let i = 0;
await Promise.all(
  Array.from({ length: RAMP_CONCURRENCY }, async () => {
    while (i < miners.length && !stopping) await miners[i++]!.connect();
  }),
);
