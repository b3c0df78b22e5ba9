import { createHash } from "node:crypto";
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import type { WebSocket } from "ws";
import type {} from "@fastify/websocket";
import { UnavailableError, errorMessage } from "../../common/errors.js";
import {
  RESULT_MAX_CHUNKS,
  assembleResult,
  parseMinerFrame,
  type FailFrame,
  type HelloFrame,
  type MinerFrame,
  type ProgressFrame,
  type ReleasedFrame,
  type ResultFrame,
  type WelcomeFrame,
} from "../../protocol/frames.js";
import type { Requirements } from "../../protocol/jobs.js";
import { PROTOCOL_VERSION } from "../../protocol/version.js";
import type { CoordinatorContext, MinerDirectory } from "../context.js";
import { bearerToken } from "../http/auth-hook.js";
import { problem, sendProblem } from "../http/problem.js";
import { minerCanRun } from "../scheduler/matching.js";
import { Scheduler } from "../scheduler/scheduler.js";
import type { ApiKeyRecord, CommitOutcome, LeaseRef } from "../store/job-store.js";
import { MinerSession, leaseKey } from "./miner-session.js";

export const MINER_GATEWAY_PATH = "/v1/miners/connect";
/** Invalid frames in a row before the connection is closed. */
const MAX_BAD_FRAMES = 3;
/** Time a new connection has to send its hello. */
const HELLO_TIMEOUT_MS = 10_000;
/** Close code for "storage unavailable, reconnect later" (RFC 6455 §7.4.1 registry: Try Again Later). */
const TRY_AGAIN_LATER = 1013;
/** Frames the miner waits on an answer for; the others are repeated by the next heartbeat anyway. */
const ANSWERED_FRAMES = new Set<MinerFrame["type"]>(["hello", "result", "fail", "released"]);

declare module "fastify" {
  interface FastifyRequest {
    minerKey?: ApiKeyRecord;
  }
}

/**
 * The miners' side of the coordinator: a WebSocket at /v1/miners/connect, authenticated with a
 * miner key at the upgrade (a client key is refused), speaking the frames of
 * src/protocol/frames.ts. Every frame is validated; an invalid one gets an error frame, and
 * MAX_BAD_FRAMES in a row close the connection. Frames of one connection are handled in order.
 *
 * A miner's id is derived from its key and name, so a reconnecting miner is the same miner and
 * resumes the leases it still holds (listed in hello.in_flight). A dropped connection alone does
 * not requeue anything: the lease expiry does, via the scheduler's reaper. A miner that comes
 * back without a job it held (it restarted) has that attempt failed at once (retryable), so the
 * job is requeued without waiting for the lease.
 *
 * When the store cannot write (disk full, database locked) a frame that needs an answer (hello,
 * result, fail, released) gets none: nothing of it is recorded, and the connection is closed with
 * 1013 (try again later). The miner reconnects with its backoff and, once welcomed, resends the
 * final frames not yet acknowledged, so the same attempt is committed when the cause goes.
 */
export class MinerGateway implements MinerDirectory {
  private readonly sessions = new Map<string, MinerSession>();
  /** Per job, the tail of the result frames being handled (see oneResultAtATime). */
  private readonly resultTails = new Map<string, Promise<void>>();
  readonly scheduler: Scheduler;

  constructor(private readonly ctx: CoordinatorContext) {
    this.scheduler = new Scheduler(ctx, () => this.sessions.values(), (id) => this.sessions.get(id));
  }

  eligibleMiners(job: { model: string; requirements: Requirements }): number {
    let n = 0;
    for (const s of this.sessions.values()) if (!s.draining && minerCanRun(job, s)) n += 1;
    return n;
  }

  connectedMiners(): number {
    return this.sessions.size;
  }

  /** Connected miners (for metrics and status). */
  miners(): MinerSession[] {
    return [...this.sessions.values()];
  }

  /** Registers the route; @fastify/websocket must already be registered on `app`. */
  register(app: FastifyInstance): void {
    app.get(
      MINER_GATEWAY_PATH,
      {
        websocket: true,
        preValidation: async (request: FastifyRequest, reply: FastifyReply) => {
          const token = bearerToken(request.headers.authorization);
          const key = token === undefined ? null : await this.ctx.store.authenticate(token, "miner");
          if (key === null) {
            return sendProblem(reply, problem(401, "unauthorized", "a valid miner key is required (Authorization: Bearer …)"));
          }
          request.minerKey = key;
          return undefined;
        },
      },
      (socket: WebSocket, request: FastifyRequest) => this.accept(socket, request.minerKey!),
    );
  }

  start(): void {
    this.scheduler.start();
  }

  /** Tells every miner to stop pulling and closes the connections (leases stay: miners resume after a restart). */
  async stop(): Promise<void> {
    await this.scheduler.stop();
    for (const s of this.sessions.values()) {
      s.send({ type: "drain", reason: "coordinator_shutdown" });
      s.close(1001, "coordinator shutting down");
    }
    this.sessions.clear();
  }

  private accept(socket: WebSocket, key: ApiKeyRecord): void {
    const log = this.ctx.log.child({ component: "gateway", keyId: key.id });
    let session: MinerSession | undefined;
    let queue: Promise<void> = Promise.resolve();
    let badFrames = 0;
    const helloTimer = setTimeout(() => {
      if (session === undefined) this.fatal(socket, "hello_timeout", "no hello frame in time");
    }, HELLO_TIMEOUT_MS);

    const reject = (code: string, message: string): void => {
      badFrames += 1;
      log.warn({ code, badFrames }, "invalid frame from miner");
      if (badFrames >= MAX_BAD_FRAMES) this.fatal(socket, code, `${message} (${badFrames} invalid frames in a row)`);
      else socket.send(JSON.stringify({ type: "error", code, message, fatal: false }));
    };

    socket.on("message", (data: Buffer | ArrayBuffer | Buffer[], isBinary: boolean) => {
      if (isBinary) return reject("frame_invalid", "frames are JSON text");
      const parsed = parseMinerFrame(data);
      if (!parsed.ok) return reject(parsed.error.code, parsed.error.message);
      badFrames = 0;
      const frame = parsed.frame;
      queue = queue
        .then(async () => {
          if (frame.type === "hello") {
            if (session !== undefined) return reject("frame_invalid", "hello was already sent");
            clearTimeout(helloTimer);
            session = await this.hello(socket, key, frame, log);
            return;
          }
          if (session === undefined) return reject("frame_invalid", "the first frame must be hello");
          await this.handle(session, frame);
        })
        .catch((err: unknown) => {
          if (!(err instanceof UnavailableError)) {
            log.error({ err: errorMessage(err), type: frame.type }, "frame handling failed");
            return;
          }
          const jobId = "job_id" in frame ? frame.job_id : undefined;
          if (!ANSWERED_FRAMES.has(frame.type)) {
            log.warn({ err: errorMessage(err), frame: frame.type, jobId }, "storage unavailable: frame not recorded");
            return;
          }
          log.warn({ err: errorMessage(err), frame: frame.type, jobId }, "storage unavailable: miner to retry");
          if (socket.readyState === socket.OPEN) {
            socket.send(JSON.stringify({ type: "error", code: "unavailable", message: "storage is temporarily unavailable: reconnect and resend", fatal: true }));
            socket.close(TRY_AGAIN_LATER, "storage unavailable");
          }
        });
      return undefined;
    });
    socket.on("close", (code: number) => {
      clearTimeout(helloTimer);
      if (session !== undefined && this.sessions.get(session.minerId) === session) {
        this.sessions.delete(session.minerId);
        session.log.info({ code, leases: session.leases.size }, "miner disconnected");
      }
    });
    socket.on("error", (err: Error) => log.warn({ err: err.message }, "miner socket error"));
  }

  private fatal(socket: WebSocket, code: string, message: string): void {
    socket.send(JSON.stringify({ type: "error", code, message, fatal: true }));
    socket.close(1008, code.slice(0, 100));
  }

  private async hello(socket: WebSocket, key: ApiKeyRecord, hello: HelloFrame, log: CoordinatorContext["log"]): Promise<MinerSession | undefined> {
    if (hello.protocol_version !== PROTOCOL_VERSION) {
      this.fatal(socket, "protocol_version", `this coordinator speaks protocol ${PROTOCOL_VERSION}, not ${hello.protocol_version}`);
      return undefined;
    }
    const minerId = `miner_${createHash("sha256").update(`${key.id}:${hello.miner_name}`).digest("hex").slice(0, 16)}`;
    const slog = log.child({ minerId });
    const previous = this.sessions.get(minerId);
    if (previous !== undefined) previous.close(4000, "replaced by a new connection");
    const session = new MinerSession(minerId, hello.miner_name, hello.gpus, hello.models, hello.slots, socket, slog);
    this.sessions.set(minerId, session);
    try {
      await this.resume(session, hello);
    } catch (err) {
      // No welcome: the connection is closed next, and no session may outlive it.
      if (this.sessions.get(minerId) === session) this.sessions.delete(minerId);
      throw err;
    }
    return session;
  }

  /** Resumes the leases the hello lists, gives up those it forgot, and sends the welcome. */
  private async resume(session: MinerSession, hello: HelloFrame): Promise<void> {
    const { minerId, log: slog } = session;
    const { leaseTtlMs, heartbeatMs } = this.ctx.config.scheduler;
    const now = this.ctx.now();
    const welcome: WelcomeFrame = { type: "welcome", miner_id: minerId, heartbeat_ms: heartbeatMs, lease_ttl_ms: leaseTtlMs, resumed: [], refused: [] };
    const claimed = new Set<string>();
    for (const f of hello.in_flight) {
      const ref: LeaseRef = { jobId: f.job_id, attempt: f.attempt, leaseToken: f.lease_token, minerId };
      claimed.add(leaseKey(f.job_id, f.attempt));
      const r = await this.ctx.store.renewLease(ref, now, leaseTtlMs);
      if (r.renewed) {
        welcome.resumed.push({ job_id: f.job_id, attempt: f.attempt, lease_token: f.lease_token, lease_expires_at: new Date(now + leaseTtlMs).toISOString() });
        session.leases.add(leaseKey(f.job_id, f.attempt));
        if (r.cancelRequested) this.scheduler.tellStop(minerId, f.job_id, f.attempt, "cancelled");
      } else {
        const job = await this.ctx.store.getJobById(f.job_id);
        welcome.refused.push({ job_id: f.job_id, attempt: f.attempt, reason: job === null ? "unknown_job" : job.attempt !== f.attempt ? "lease_lost" : job.status });
      }
    }
    // Leases this miner held that it no longer knows about: it restarted and lost them.
    for (const job of await this.ctx.store.listLeasedBy(minerId)) {
      if (claimed.has(leaseKey(job.id, job.attempt)) || job.leaseToken === null) continue;
      const outcome = await this.ctx.store.failAttempt(
        { jobId: job.id, attempt: job.attempt, leaseToken: job.leaseToken, minerId },
        { code: "miner_restarted", message: "the miner restarted and lost the job", retryable: true },
        now,
        this.ctx.config.scheduler.requeueBackoffMs,
      );
      slog.info({ jobId: job.id, attempt: job.attempt, outcome }, "lease of a restarted miner given up");
    }
    session.send(welcome);
    slog.info(
      { name: hello.miner_name, gpus: hello.gpus.length, models: hello.models, slots: hello.slots, resumed: welcome.resumed.length, refused: welcome.refused.length },
      "miner connected",
    );
  }

  private async handle(s: MinerSession, frame: MinerFrame): Promise<void> {
    const now = this.ctx.now();
    const { leaseTtlMs, requeueBackoffMs } = this.ctx.config.scheduler;
    switch (frame.type) {
      case "pull":
        s.credits = frame.free_slots;
        s.draining = false;
        this.scheduler.dispatch();
        return;
      case "started":
        await this.ctx.store.markRunning(ref(frame, s), now, leaseTtlMs);
        return;
      case "progress":
        return this.progress(s, frame, now);
      case "heartbeat":
        for (const f of frame.in_flight) {
          const r = await this.ctx.store.renewLease(ref(f, s), now, leaseTtlMs);
          if (!r.renewed && f.state === "running") this.scheduler.tellStop(s.minerId, f.job_id, f.attempt, "lease_lost");
        }
        return;
      case "result_chunk": {
        const k = leaseKey(frame.job_id, frame.attempt);
        // Only for a lease this connection holds: chunks are buffered in memory until the
        // result, so others are dropped (the result that follows them is acked "stale").
        if (!s.leases.has(k)) {
          s.log.debug({ jobId: frame.job_id, attempt: frame.attempt }, "result chunk for a lease not held dropped");
          return;
        }
        const list = s.chunks.get(k) ?? [];
        if (list.length >= RESULT_MAX_CHUNKS) {
          s.send({ type: "error", code: "frame_invalid", message: "too many result chunks", fatal: false });
          return;
        }
        list.push(frame);
        s.chunks.set(k, list);
        return;
      }
      case "result":
        return this.result(s, frame);
      case "fail":
        return this.fail(s, frame, now, requeueBackoffMs);
      case "released":
        return this.released(s, frame, now);
      case "error":
        s.log.warn({ code: frame.code, fatal: frame.fatal }, "miner reported an error");
        return;
      case "hello":
        return;
    }
  }

  private async progress(s: MinerSession, f: ProgressFrame, now: number): Promise<void> {
    const pct = f.max_tokens > 0 ? (100 * f.tokens) / f.max_tokens : 0;
    // Progress below 100 until the result is committed: 100 means "done and downloadable".
    const shown = Math.min(99, pct);
    const r = await this.ctx.store.renewLease(ref(f, s), now, this.ctx.config.scheduler.leaseTtlMs, shown);
    if (!r.renewed) {
      this.scheduler.tellStop(s.minerId, f.job_id, f.attempt, "lease_lost");
      return;
    }
    this.ctx.events.publishProgress({
      jobId: f.job_id,
      attempt: f.attempt,
      progress: shown,
      tokens: f.tokens,
      maxTokens: f.max_tokens,
      tokensPerSecond: f.tokens_per_s,
      at: now,
    });
    if (r.cancelRequested) this.scheduler.tellStop(s.minerId, f.job_id, f.attempt, "cancelled");
  }

  /**
   * Results of one job are handled one at a time, across connections: a miner that reconnects
   * resends its result while the first copy may still be in flight on the old connection. Storing
   * and committing are two steps, so without this two copies could both pass the "completed?"
   * check and the later file would replace the committed one under the same name.
   */
  private async oneResultAtATime(jobId: string, fn: () => Promise<void>): Promise<void> {
    const run = (this.resultTails.get(jobId) ?? Promise.resolve()).then(fn);
    const tail = run.catch(() => undefined);
    this.resultTails.set(jobId, tail);
    try {
      await run;
    } finally {
      if (this.resultTails.get(jobId) === tail) this.resultTails.delete(jobId);
    }
  }

  private async result(s: MinerSession, f: ResultFrame): Promise<void> {
    const k = leaseKey(f.job_id, f.attempt);
    const chunks = s.chunks.get(k) ?? [];
    s.chunks.delete(k);
    const assembled = assembleResult(f, chunks);
    if (!assembled.ok) {
      this.ctx.metrics.results.inc({ outcome: "invalid" });
      s.send({ type: "ack", job_id: f.job_id, attempt: f.attempt, of: "result", status: "invalid", message: assembled.reason });
      return;
    }
    await this.oneResultAtATime(f.job_id, () => this.storeResult(s, f, assembled.bytes));
  }

  private async storeResult(s: MinerSession, f: ResultFrame, bytes: Buffer): Promise<void> {
    const now = this.ctx.now();
    const k = leaseKey(f.job_id, f.attempt);
    const lease = ref(f, s);
    const current = await this.ctx.store.getJobById(f.job_id);
    if (current === null) {
      s.leases.delete(k);
      s.send({ type: "ack", job_id: f.job_id, attempt: f.attempt, of: "result", status: "stale", message: "unknown job" });
      return;
    }
    if (current.status === "completed") {
      const dup = current.result?.attempt === f.attempt && current.result.sha256 === f.sha256;
      const outcome = dup ? "duplicate" : "stale";
      s.leases.delete(k);
      this.ctx.metrics.results.inc({ outcome });
      s.send({ type: "ack", job_id: f.job_id, attempt: f.attempt, of: "result", status: outcome });
      s.log.info({ jobId: f.job_id, attempt: f.attempt, outcome }, "result received");
      return;
    }
    const stored = await this.ctx.results.put(f.job_id, f.attempt, bytes);
    let outcome: CommitOutcome;
    try {
      outcome = await this.ctx.store.commitResult(
        lease,
        {
          sha256: stored.sha256,
          bytes: stored.bytes,
          location: stored.location,
          finishReason: f.finish_reason,
          usage: f.usage,
          tokensPerSecond: f.timing.tokens_per_second,
          attempt: f.attempt,
        },
        now,
      );
    } catch (err) {
      // Not committed, and no other copy of this job's result is in flight: no file without its commit.
      await this.ctx.results.remove(stored.location).catch(() => undefined);
      throw err;
    }
    if (outcome === "stale") {
      const after = await this.ctx.store.getJobById(f.job_id);
      if (after?.result?.location !== stored.location) await this.ctx.results.remove(stored.location);
    }
    s.leases.delete(k);
    this.ctx.metrics.results.inc({ outcome });
    s.send({ type: "ack", job_id: f.job_id, attempt: f.attempt, of: "result", status: outcome });
    s.log.info({ jobId: f.job_id, attempt: f.attempt, outcome, bytes: stored.bytes }, "result received");
  }

  private async fail(s: MinerSession, f: FailFrame, now: number, backoffMs: number): Promise<void> {
    const outcome = await this.ctx.store.failAttempt(ref(f, s), { code: f.code, message: f.message, retryable: f.retryable }, now, backoffMs);
    s.leases.delete(leaseKey(f.job_id, f.attempt));
    s.send({ type: "ack", job_id: f.job_id, attempt: f.attempt, of: "fail", status: outcome === "stale" ? "stale" : "committed" });
    s.log.info({ jobId: f.job_id, attempt: f.attempt, code: f.code, outcome }, "attempt failed");
  }

  private async released(s: MinerSession, f: ReleasedFrame, now: number): Promise<void> {
    const outcome = await this.ctx.store.releaseLease(ref(f, s), now);
    s.leases.delete(leaseKey(f.job_id, f.attempt));
    if (f.reason === "draining" || f.reason === "shutdown") s.draining = true;
    s.send({ type: "ack", job_id: f.job_id, attempt: f.attempt, of: "released", status: outcome === "stale" ? "stale" : "committed" });
    s.log.info({ jobId: f.job_id, attempt: f.attempt, reason: f.reason, outcome }, "job handed back");
  }
}

/** The lease a frame names, presented by the session's miner. */
function ref(f: { job_id: string; attempt: number; lease_token: string }, s: MinerSession): LeaseRef {
  return { jobId: f.job_id, attempt: f.attempt, leaseToken: f.lease_token, minerId: s.minerId };
}

