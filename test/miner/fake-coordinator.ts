import type { IncomingMessage } from "node:http";
import type { AddressInfo } from "node:net";
import { WebSocketServer, type WebSocket } from "ws";
import {
  encodeFrame,
  parseMinerFrame,
  type AssignFrame,
  type AssignedJob,
  type CoordinatorFrame,
  type HelloFrame,
  type MinerFrame,
  type WelcomeFrame,
} from "../../src/protocol/frames.js";

/**
 * A coordinator stand-in for miner tests: a real `ws` server on port 0 that speaks the
 * protocol frames. It authenticates the bearer key, validates every miner frame with the same
 * parser the gateway uses, answers hello with welcome (resuming every in-flight lease unless
 * told otherwise), pull with queued jobs, and result/fail/released with ack "committed".
 */
export interface Received {
  conn: number;
  frame: MinerFrame;
}

export class FakeCoordinator {
  readonly received: Received[] = [];
  readonly invalid: string[] = [];
  readonly authFailures: number[] = [];
  private readonly server: WebSocketServer;
  private socket: WebSocket | undefined;
  private conns = 0;
  private freeSlots = 0;
  private readonly queue: AssignFrame[] = [];
  private waiters: { pred: (r: Received) => boolean; resolve: (r: Received) => void }[] = [];
  private leaseSeq = 0;
  /** Set false to refuse upgrades with 401 (as if the coordinator were down). */
  accepting = true;
  /** Decides welcome.refused for a hello; default resumes everything. */
  refuse: (hello: HelloFrame) => WelcomeFrame["refused"] = () => [];
  /** Whether result/fail/released get an ack automatically. */
  autoAck = true;
  heartbeatMs = 200;
  leaseTtlMs = 30_000;
  /** welcome.protocol_version; undefined = a protocol 3 coordinator (no such field). */
  protocolVersion: number | undefined;

  private constructor(readonly key: string) {
    this.server = new WebSocketServer({
      port: 0,
      path: "/v1/miners/connect",
      verifyClient: (info: { req: IncomingMessage }, cb: (ok: boolean, code?: number) => void) => {
        const ok = this.accepting && info.req.headers.authorization === `Bearer ${this.key}`;
        if (!ok) this.authFailures.push(Date.now());
        cb(ok, 401);
      },
    });
    this.server.on("connection", (ws) => this.onConnection(ws));
  }

  static async start(key = "miner-test-key"): Promise<FakeCoordinator> {
    const c = new FakeCoordinator(key);
    await new Promise<void>((resolve) => c.server.once("listening", () => resolve()));
    return c;
  }

  get url(): string {
    return `ws://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  get connections(): number {
    return this.conns;
  }

  /** Queues a job; it is assigned when the miner has pulled a free slot. */
  enqueue(job: Partial<AssignedJob> & { job_id: string }, attempt = 1): AssignFrame {
    const frame: AssignFrame = {
      type: "assign",
      job: {
        model: "tiny-gpt2",
        prompt: "Hello miner",
        parameters: { max_new_tokens: 8, temperature: 0, top_k: 0, top_p: 1, repetition_penalty: 1, stop: [], seed: 7 },
        timeout_seconds: 60,
        ...job,
      },
      attempt,
      lease_token: `lease-${++this.leaseSeq}`,
      lease_expires_at: new Date(Date.now() + 30_000).toISOString(),
    };
    this.queue.push(frame);
    this.dispatch();
    return frame;
  }

  send(frame: CoordinatorFrame | Record<string, unknown>): void {
    this.socket?.send(JSON.stringify(frame));
  }

  sendRaw(text: string): void {
    this.socket?.send(text);
  }

  /** Kills the current connection without a close handshake (as a network loss would). */
  drop(): void {
    this.socket?.terminate();
  }

  /** Stops reading from the current connection: pings go unanswered, as with a hung host. */
  stopReading(): void {
    (this.socket as unknown as { _socket?: { pause(): void } } | undefined)?._socket?.pause();
  }

  /** Reads the current connection again after stopReading(). */
  resumeReading(): void {
    (this.socket as unknown as { _socket?: { resume(): void } } | undefined)?._socket?.resume();
  }

  frames<T extends MinerFrame["type"]>(type: T): Extract<MinerFrame, { type: T }>[] {
    return this.received.filter((r) => r.frame.type === type).map((r) => r.frame as Extract<MinerFrame, { type: T }>);
  }

  /** Resolves with the first received frame (past or future) matching `pred`. */
  waitFor(pred: (r: Received) => boolean, timeoutMs = 10_000): Promise<Received> {
    const seen = this.received.find(pred);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("timed out waiting for a frame")), timeoutMs);
      this.waiters.push({
        pred,
        resolve: (r) => {
          clearTimeout(timer);
          resolve(r);
        },
      });
    });
  }

  waitForType<T extends MinerFrame["type"]>(
    type: T,
    pred: (f: Extract<MinerFrame, { type: T }>) => boolean = () => true,
    timeoutMs?: number,
  ): Promise<Extract<MinerFrame, { type: T }>> {
    return this.waitFor((r) => r.frame.type === type && pred(r.frame as Extract<MinerFrame, { type: T }>), timeoutMs).then(
      (r) => r.frame as Extract<MinerFrame, { type: T }>,
    );
  }

  async close(): Promise<void> {
    for (const ws of this.server.clients) ws.terminate();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private onConnection(ws: WebSocket): void {
    const conn = ++this.conns;
    this.socket = ws;
    this.freeSlots = 0;
    ws.on("message", (data) => {
      const parsed = parseMinerFrame(data);
      if (!parsed.ok) {
        this.invalid.push(parsed.error.message);
        return;
      }
      const frame = parsed.frame;
      const rec = { conn, frame };
      this.received.push(rec);
      this.react(ws, frame);
      this.waiters = this.waiters.filter((w) => {
        if (!w.pred(rec)) return true;
        w.resolve(rec);
        return false;
      });
    });
  }

  private react(ws: WebSocket, frame: MinerFrame): void {
    switch (frame.type) {
      case "hello": {
        const refused = this.refuse(frame);
        const gone = new Set(refused.map((r) => `${r.job_id}#${r.attempt}`));
        const welcome: WelcomeFrame = {
          type: "welcome",
          miner_id: "miner_test",
          heartbeat_ms: this.heartbeatMs,
          lease_ttl_ms: this.leaseTtlMs,
          resumed: frame.in_flight
            .filter((f) => !gone.has(`${f.job_id}#${f.attempt}`))
            .map((f) => ({
              job_id: f.job_id,
              attempt: f.attempt,
              lease_token: f.lease_token,
              lease_expires_at: new Date(Date.now() + 30_000).toISOString(),
            })),
          refused,
          ...(this.protocolVersion === undefined ? {} : { protocol_version: this.protocolVersion }),
        };
        ws.send(encodeFrame(welcome));
        return;
      }
      case "pull":
        this.freeSlots = frame.free_slots;
        this.dispatch();
        return;
      case "result":
      case "fail":
      case "released":
        if (this.autoAck) {
          ws.send(encodeFrame({ type: "ack", job_id: frame.job_id, attempt: frame.attempt, of: frame.type, status: "committed" }));
        }
        return;
      default:
        return;
    }
  }

  private dispatch(): void {
    while (this.freeSlots > 0 && this.queue.length > 0 && this.socket !== undefined) {
      const next = this.queue.shift()!;
      this.freeSlots--;
      this.socket.send(encodeFrame(next));
    }
  }
}
