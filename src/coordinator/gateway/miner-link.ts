import type { WebSocket } from "ws";
import type { Logger } from "../../common/logger.js";
import { encodeFrame, parseMinerFrame, type CoordinatorFrame, type MinerFrame } from "../../protocol/frames.js";
import type { FrameBudget } from "./frame-budget.js";

/** Invalid frames in a row before the connection is closed. */
export const MAX_BAD_FRAMES = 3;

export interface MinerLinkOptions {
  socket: WebSocket;
  log: Logger;
  budget: FrameBudget;
  /** Frames accepted but not yet handled before the connection is closed (the budget keeps this far away). */
  maxQueued: number;
  pingIntervalMs: number;
  maxMissedPongs: number;
  helloTimeoutMs: number;
  now: () => number;
  /** Handles one valid frame: a job's frames one at a time in order, after the hello (see message()). */
  onFrame: (frame: MinerFrame) => Promise<void>;
  /** A handler threw (or rejected) for this frame. */
  onFailure: (err: unknown, frame: MinerFrame) => void;
  onClose: (code: number) => void;
  /** The link is being closed for spending its frame budget. */
  onOverBudget: () => void;
}

function frameSize(data: Buffer | ArrayBuffer | Buffer[]): number {
  if (Array.isArray(data)) return data.reduce((n, b) => n + b.length, 0);
  return data.byteLength;
}

/**
 * One miner WebSocket below the protocol: the frame budget (a token bucket; past it an error
 * frame `rate_limited`, then a close), validation (an error frame for each invalid frame,
 * MAX_BAD_FRAMES in a row close), in-order handling per job, liveness (a ping every interval; a peer
 * that misses `maxMissedPongs` in a row — stopped, hung or gone without a FIN — is dropped) and
 * the hello deadline.
 */
export class MinerLink {
  private badFrames = 0;
  /** Frames refused as they arrived (unparsable, binary), ever: which of them came after a given frame. */
  private refusedOnArrival = 0;
  private queued = 0;
  /** The tail of the frames that name no job (hello, pull, heartbeat, error). */
  private queue: Promise<void> = Promise.resolve();
  /** The tail of each job's frames still being handled, by job id. */
  private readonly lanes = new Map<string, Promise<void>>();
  private missedPongs = 0;
  private awaitingPong = false;
  private closing = false;
  private readonly pingTimer: NodeJS.Timeout;
  private helloTimer: NodeJS.Timeout | undefined;

  constructor(private readonly o: MinerLinkOptions) {
    const { socket } = o;
    this.helloTimer = setTimeout(() => this.fatal("hello_timeout", "no hello frame in time"), o.helloTimeoutMs);
    this.pingTimer = setInterval(() => this.ping(), o.pingIntervalMs);
    socket.on("message", (data: Buffer | ArrayBuffer | Buffer[], isBinary: boolean) => this.message(data, isBinary));
    socket.on("pong", () => this.alive());
    socket.on("close", (code: number) => {
      this.closing = true;
      clearInterval(this.pingTimer);
      clearTimeout(this.helloTimer);
      o.onClose(code);
    });
    socket.on("error", (err: Error) => o.log.warn({ err: err.message }, "miner socket error"));
  }

  get open(): boolean {
    return !this.closing && this.o.socket.readyState === this.o.socket.OPEN;
  }

  /** The hello was handled: no more hello deadline. */
  helloDone(): void {
    clearTimeout(this.helloTimer);
    this.helloTimer = undefined;
  }

  send(frame: CoordinatorFrame): boolean {
    if (!this.open) return false;
    this.o.socket.send(encodeFrame(frame));
    return true;
  }

  /** An error frame (fatal) and a close with 1008 policy violation, or `closeCode`. */
  fatal(code: string, message: string, closeCode = 1008): void {
    if (this.closing) return;
    this.send({ type: "error", code, message: message.slice(0, 2048), fatal: true });
    this.close(closeCode, code.slice(0, 100));
  }

  close(code: number, reason: string): void {
    this.closing = true;
    this.o.socket.close(code, reason);
  }

  private message(data: Buffer | ArrayBuffer | Buffer[], isBinary: boolean): void {
    if (this.closing) return;
    this.alive();
    if (!this.o.budget.take(this.o.now(), frameSize(data))) {
      this.o.log.warn("miner over its frame budget: closing");
      this.o.onOverBudget();
      this.fatal("rate_limited", "more frames or bytes than the coordinator's frame budget allows ([gateway] frame_rate, frame_burst, byte_rate, byte_burst)");
      return;
    }
    if (isBinary) return this.refuseOnArrival("frame_invalid", "frames are JSON text");
    const parsed = parseMinerFrame(data);
    if (!parsed.ok) return this.refuseOnArrival(parsed.error.code, parsed.error.message);
    this.badFrames = 0;
    if (this.queued >= this.o.maxQueued) {
      this.fatal("rate_limited", "too many frames waiting to be handled");
      return;
    }
    const frame = parsed.frame;
    this.queued++;
    // One job's frames are handled in order (its chunks before its result), but not behind
    // another job's: a miner's `started` for one job must not wait for the S3 upload and commit of
    // another's result. A job's first frame waits for the frames before it that name no job (the
    // hello above all); frames that name no job do not wait for jobs' frames.
    const jobId = "job_id" in frame ? frame.job_id : undefined;
    const after = jobId === undefined ? this.queue : (this.lanes.get(jobId) ?? this.queue);
    const refusedBefore = this.refusedOnArrival;
    const tail = after
      .then(async () => {
        if (this.closing && frame.type === "hello") return;
        // A frame its handler refuses (a second hello) counts as invalid; one it handles ends the
        // row, unless invalid frames arrived after it (its handling may end after theirs began).
        const before = this.badFrames;
        await this.o.onFrame(frame);
        if (this.badFrames === before && this.refusedOnArrival === refusedBefore) this.badFrames = 0;
      })
      .catch((err: unknown) => this.o.onFailure(err, frame))
      .finally(() => {
        this.queued--;
        if (jobId !== undefined && this.lanes.get(jobId) === tail) this.lanes.delete(jobId);
      });
    if (jobId === undefined) this.queue = tail;
    else this.lanes.set(jobId, tail);
  }

  /** Waits until the jobs' frames accepted so far have been handled (not the ones naming no job). */
  async jobFramesHandled(): Promise<void> {
    await Promise.all(this.lanes.values());
  }

  /** Waits until every frame accepted so far has been handled. */
  async drained(): Promise<void> {
    await Promise.all([this.queue, ...this.lanes.values()]);
  }

  private refuseOnArrival(code: string, message: string): void {
    this.refusedOnArrival += 1;
    this.refuse(code, message);
  }

  /** Refuses a frame: an error frame, and after MAX_BAD_FRAMES in a row a close. */
  refuse(code: string, message: string): void {
    this.badFrames += 1;
    this.o.log.warn({ code, badFrames: this.badFrames }, "invalid frame from miner");
    if (this.badFrames >= MAX_BAD_FRAMES) this.fatal(code, `${message} (${this.badFrames} invalid frames in a row)`);
    else this.send({ type: "error", code, message: message.slice(0, 2048), fatal: false });
  }

  private alive(): void {
    this.awaitingPong = false;
    this.missedPongs = 0;
  }

  private ping(): void {
    if (!this.open) return;
    if (this.awaitingPong) {
      this.missedPongs++;
      if (this.missedPongs >= this.o.maxMissedPongs) {
        this.o.log.warn({ missed: this.missedPongs }, "miner stopped answering pings: dropping the connection");
        this.closing = true;
        this.o.socket.terminate();
        return;
      }
    }
    this.awaitingPong = true;
    this.o.socket.ping();
  }
}
