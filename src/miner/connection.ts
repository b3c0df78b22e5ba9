import { EventEmitter } from "node:events";
import WebSocket from "ws";
import { Backoff } from "../common/backoff.js";
import type { Logger } from "../common/logger.js";
import {
  DUPLICATE_MINER,
  MAX_FRAME_BYTES,
  encodeFrame,
  parseCoordinatorFrame,
  type CoordinatorFrame,
  type HeartbeatFrame,
  type HelloFrame,
  type MinerFrame,
  type WelcomeFrame,
} from "../protocol/frames.js";

/**
 * The miner's WebSocket client. It dials the gateway with `Authorization: Bearer <miner key>`,
 * sends `hello` (built fresh each time, so a reconnect reports the jobs still in flight), waits
 * for `welcome`, then sends `heartbeat` frames (and a WebSocket ping) every `heartbeat_ms` the
 * welcome names. The connection is taken for dead (and dropped, then redialled) when nothing at
 * all — no frame, no pong, no ping — has arrived for the welcome's lease TTL (at least three
 * heartbeats): a slow link keeps delivering and so stays up, as the lease does; a partitioned or
 * hung coordinator goes quiet. Every received frame is validated; a bad one is answered with an error frame
 * and, after MAX_BAD_FRAMES in a row, the connection is dropped. When the connection ends for
 * any reason other than close(), it reconnects after a jittered backoff (see Backoff: 0.5 s,
 * 1 s, 2 s, … 30 s bounds by default) that resets once a welcome arrives.
 *
 * A hello refused with `duplicate_miner` (another miner process holds a live session under this
 * key and name) is not retried at that pace: each next try waits `duplicateRetryMs` (drawn from
 * [½, 1] of it, by default the longest reconnect delay), with a warning each time. The miner
 * keeps trying rather than exiting, because the holder may be this host's own previous process
 * whose connection the coordinator has not yet seen die (it drops it after max_missed_pongs
 * heartbeats); a real second host stays refused, one warning per try, until it is renamed.
 *
 * Events: "connecting" {attempt}, "welcome" WelcomeFrame, "frame" CoordinatorFrame (every frame
 * after the welcome: assign, cancel, ack, drain, error), "refused" {code, message} (a fatal
 * error answering the hello), "disconnected" {code, reason}.
 */
const MAX_BAD_FRAMES = 3;

export interface MinerConnectionOptions {
  /**
   * Full ws(s) URLs of the gateway (coordinator replicas, or one load balancer). The connection
   * uses one at a time; after a failure it moves to the next, with the same backoff.
   */
  urls: string[];
  /** Miner key; sent only in the upgrade's Authorization header, never logged. */
  key: string;
  log: Logger;
  hello: () => HelloFrame;
  heartbeat: () => HeartbeatFrame;
  /** Time for the upgrade plus the welcome, ms. */
  connectTimeoutMs: number;
  backoff?: Backoff;
  /** The wait before trying again after a duplicate_miner refusal, ms (jittered down to half). Default 30 s. */
  duplicateRetryMs?: number;
}

export interface MinerConnectionEvents {
  connecting: [{ attempt: number }];
  refused: [{ code: string; message: string }];
  welcome: [WelcomeFrame];
  frame: [CoordinatorFrame];
  disconnected: [{ code: number; reason: string }];
}

export class MinerConnection extends EventEmitter<MinerConnectionEvents> {
  private ws: WebSocket | undefined;
  private welcomed = false;
  private closing = false;
  private started = false;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private connectTimer: NodeJS.Timeout | undefined;
  private heartbeatTimer: NodeJS.Timeout | undefined;
  private badFrames = 0;
  /** Set when the hello was refused as a duplicate: the next try waits duplicateRetryMs. */
  private duplicate = false;
  private lastHeardAt = 0;
  private attempts = 0;
  /** Which of `urls` the next connection dials. */
  private next = 0;
  private closed: Promise<void> | undefined;
  private readonly backoff: Backoff;
  private readonly log: Logger;

  constructor(private readonly options: MinerConnectionOptions) {
    super();
    this.backoff = options.backoff ?? new Backoff();
    this.log = options.log.child({ component: "connection" });
  }

  /** True between a welcome and the end of that connection. */
  get ready(): boolean {
    return this.welcomed && this.ws?.readyState === WebSocket.OPEN;
  }

  /** Connects, and keeps reconnecting until close(). */
  start(): void {
    if (this.started) return;
    this.started = true;
    this.connect();
  }

  /** Sends a frame if the connection is ready; false otherwise (the caller decides what to keep). */
  send(frame: MinerFrame): boolean {
    if (!this.ready && frame.type !== "hello") return false;
    return this.write(frame);
  }

  /** Closes for good: no more reconnects. Idempotent. */
  close(): Promise<void> {
    if (this.closed !== undefined) return this.closed;
    this.closing = true;
    clearTimeout(this.reconnectTimer);
    const ws = this.ws;
    this.closed = new Promise<void>((resolve) => {
      if (ws === undefined || ws.readyState === WebSocket.CLOSED) {
        resolve();
        return;
      }
      // A peer that never completes the close handshake must not hold up shutdown.
      const force = setTimeout(() => {
        ws.terminate();
        resolve();
      }, 2_000);
      ws.once("close", () => {
        clearTimeout(force);
        resolve();
      });
      if (ws.readyState === WebSocket.CONNECTING) ws.terminate();
      else ws.close(1000, "miner stopping");
    });
    return this.closed;
  }

  private write(frame: MinerFrame): boolean {
    const ws = this.ws;
    if (ws === undefined || ws.readyState !== WebSocket.OPEN) return false;
    const text = encodeFrame(frame);
    if (Buffer.byteLength(text) > MAX_FRAME_BYTES) {
      this.log.error({ type: frame.type }, "frame over the size limit not sent");
      return false;
    }
    ws.send(text);
    return true;
  }

  private connect(): void {
    if (this.closing) return;
    this.attempts++;
    this.emit("connecting", { attempt: this.attempts });
    const url = this.options.urls[this.next % this.options.urls.length]!;
    this.log.info({ url, attempt: this.attempts }, "connecting to coordinator");
    const ws = new WebSocket(url, {
      headers: { Authorization: `Bearer ${this.options.key}` },
      handshakeTimeout: this.options.connectTimeoutMs,
      maxPayload: MAX_FRAME_BYTES,
    });
    this.ws = ws;
    this.welcomed = false;
    this.badFrames = 0;
    this.connectTimer = setTimeout(() => {
      this.log.warn("no welcome in time: dropping the connection");
      ws.terminate();
    }, this.options.connectTimeoutMs);

    ws.on("open", () => {
      this.write(this.options.hello());
    });
    ws.on("message", (data, isBinary) => {
      this.heard();
      if (isBinary) {
        this.badFrame(ws, "frame_invalid", "binary frames are not part of the protocol");
        return;
      }
      this.onMessage(ws, data);
    });
    ws.on("pong", () => this.heard());
    ws.on("ping", () => this.heard());
    ws.on("unexpected-response", (_req, res) => {
      this.log.error({ status: res.statusCode }, "coordinator refused the connection");
      ws.terminate();
    });
    ws.on("error", (err) => {
      this.log.warn({ err: err.message }, "connection error");
    });
    ws.on("close", (code, reasonBuf) => {
      const reason = reasonBuf.toString("utf8");
      clearTimeout(this.connectTimer);
      clearInterval(this.heartbeatTimer);
      const wasWelcomed = this.welcomed;
      this.welcomed = false;
      if (this.ws === ws) this.ws = undefined;
      this.log.info({ code, reason, wasWelcomed }, "disconnected from coordinator");
      this.emit("disconnected", { code, reason });
      if (!this.closing) {
        // This coordinator failed (or went away): the next one in the list gets the next try.
        this.next = (this.next + 1) % this.options.urls.length;
        const long = this.options.duplicateRetryMs ?? 30_000;
        const delay = this.duplicate ? Math.round(long / 2 + (Math.random() * long) / 2) : this.backoff.next();
        this.duplicate = false;
        this.log.info({ delayMs: delay }, "reconnecting after backoff");
        this.reconnectTimer = setTimeout(() => this.connect(), delay);
      }
    });
  }

  private onMessage(ws: WebSocket, data: WebSocket.RawData): void {
    const parsed = parseCoordinatorFrame(data);
    if (!parsed.ok) {
      this.badFrame(ws, parsed.error.code, parsed.error.message);
      return;
    }
    this.badFrames = 0;
    const frame = parsed.frame;
    if (!this.welcomed) {
      if (frame.type === "welcome") {
        clearTimeout(this.connectTimer);
        this.welcomed = true;
        this.backoff.reset();
        this.startHeartbeats(ws, frame.heartbeat_ms, frame.lease_ttl_ms);
        this.log.info({ minerId: frame.miner_id, heartbeatMs: frame.heartbeat_ms, replica: frame.replica }, "welcomed by coordinator");
        this.emit("welcome", frame);
      } else if (frame.type === "error") {
        if (frame.code === DUPLICATE_MINER) {
          this.duplicate = true;
          this.log.warn({ code: frame.code, message: frame.message, retryInMs: this.options.duplicateRetryMs ?? 30_000 }, "coordinator refused hello: another miner process holds this name");
        } else {
          this.log.error({ code: frame.code, message: frame.message, fatal: frame.fatal }, "coordinator refused hello");
        }
        if (frame.fatal) {
          this.emit("refused", { code: frame.code, message: frame.message });
          ws.close(1000, "refused");
        }
      } else {
        this.badFrame(ws, "frame_unexpected", `${frame.type} before welcome`);
      }
      return;
    }
    if (frame.type === "welcome") {
      this.badFrame(ws, "frame_unexpected", "second welcome");
      return;
    }
    if (frame.type === "error") {
      this.log.warn({ code: frame.code, message: frame.message, fatal: frame.fatal }, "coordinator sent an error");
    }
    this.emit("frame", frame);
  }

  private badFrame(ws: WebSocket, code: string, message: string): void {
    this.badFrames++;
    const fatal = this.badFrames >= MAX_BAD_FRAMES;
    this.log.warn({ code, badFrames: this.badFrames }, "invalid frame from coordinator");
    this.write({ type: "error", code, message: message.slice(0, 2048), fatal });
    if (fatal) ws.close(1008, "too many invalid frames");
  }

  private heard(): void {
    this.lastHeardAt = Date.now();
  }

  private startHeartbeats(ws: WebSocket, intervalMs: number, leaseTtlMs: number): void {
    clearInterval(this.heartbeatTimer);
    this.heard();
    const deadAfterMs = Math.max(3 * intervalMs, leaseTtlMs);
    this.heartbeatTimer = setInterval(() => {
      if (ws.readyState !== WebSocket.OPEN) return;
      const quietMs = Date.now() - this.lastHeardAt;
      if (quietMs > deadAfterMs) {
        this.log.warn({ quietMs }, "nothing heard from the coordinator for a lease TTL: dropping the connection");
        ws.terminate();
        return;
      }
      ws.ping();
      this.write(this.options.heartbeat());
    }, intervalMs);
  }
}
