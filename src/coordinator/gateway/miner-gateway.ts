import { createHash } from "node:crypto";
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import type { WebSocket } from "ws";
import type {} from "@fastify/websocket";
import { UnavailableError, errorMessage } from "../../common/errors.js";
import type { Logger } from "../../common/logger.js";
import { DUPLICATE_MINER, type HelloFrame, type MinerFrame, type WelcomeFrame } from "../../protocol/frames.js";
import type { Requirements } from "../../protocol/jobs.js";
import { OLDEST_PROTOCOL_VERSION, PROTOCOL_VERSION } from "../../protocol/version.js";
import type { RevocationHolder } from "../auth/revocation-watcher.js";
import type { CoordinatorContext, MinerDirectory } from "../context.js";
import { bearerToken } from "../http/auth-hook.js";
import { problem, sendProblem } from "../http/problem.js";
import { minerCanRun } from "../scheduler/matching.js";
import { Scheduler, type Fleet } from "../scheduler/scheduler.js";
import type { ApiKeyRecord, MinerRecord } from "../store/job-store.js";
import { FrameBudget } from "./frame-budget.js";
import { LeaseFrames } from "./lease-frames.js";
import { MinerLink } from "./miner-link.js";
import { MinerSession, leaseKey } from "./miner-session.js";
import { clampHello } from "./plausibility.js";
import { ChunkBuffer, ResultBufferPool } from "./result-chunks.js";
import { ResultIntake } from "./result-intake.js";

export const MINER_GATEWAY_PATH = "/v1/miners/connect";
/** Time a new connection has to send its hello. */
const HELLO_TIMEOUT_MS = 10_000;
/** Close code for "storage unavailable, reconnect later" (RFC 6455 §7.4.1 registry: Try Again Later). */
const TRY_AGAIN_LATER = 1013;
/** Close code after a duplicate_miner refusal (4000–4999: the application's own). */
const DUPLICATE_MINER_CLOSE = 4009;
/** Frames the miner waits on an answer for; the others are repeated by the next heartbeat anyway. */
const ANSWERED_FRAMES = new Set<MinerFrame["type"]>(["hello", "result", "fail", "released"]);

declare module "fastify" {
  interface FastifyRequest {
    minerKey?: ApiKeyRecord;
  }
}

/** One WebSocket: its link, the key it came with, and its session once the hello is handled. */
interface Connection {
  link: MinerLink;
  key: ApiKeyRecord;
  log: Logger;
  session?: MinerSession;
}

/**
 * The miners' side of the coordinator: a WebSocket at /v1/miners/connect, authenticated with a
 * miner key at the upgrade (a client key is refused; a plain GET gets a problem saying so),
 * speaking the frames of src/protocol/frames.ts. Below the protocol each socket is a MinerLink
 * (frame budget, validation, order, pings); after the hello a MinerSession (the miner's
 * identity, leases and credits). Lease frames go to LeaseFrames, results to ResultIntake; the
 * scheduler reaches sessions only through the Fleet interface.
 *
 * A miner's id is derived from its key and name, so a reconnecting miner is the same miner and
 * resumes the leases it still holds (listed in hello.in_flight). A dropped connection alone does
 * not requeue anything: the lease expiry does, via the scheduler's reaper. A miner that comes
 * back without a job it held (it restarted) has that attempt failed at once (retryable), so the
 * job is requeued without waiting for the lease. A revoked key's connections are closed and its
 * miners' leases handed back at once.
 *
 * When the store cannot write (disk full, database locked) a frame that needs an answer (hello,
 * result, fail, released) gets none: nothing of it is recorded, and the connection is closed with
 * 1013 (try again later). The miner reconnects with its backoff and, once welcomed, resends the
 * final frames not yet acknowledged, so the same attempt is committed when the cause goes.
 */
export class MinerGateway implements MinerDirectory, Fleet, RevocationHolder {
  /** The directory's version (see version()): bumped by every change to what it answers. */
  private directoryVersion = 1;
  private readonly bumpVersion = (): void => {
    this.directoryVersion += 1;
  };
  private readonly sessions = new SessionTable(this.bumpVersion);
  private readonly connections = new Set<Connection>();
  private readonly perKey = new Map<string, number>();
  /** Keys whose connection was closed for its frame budget, until when their new ones are refused. */
  private readonly cooling = new Map<string, number>();
  /** Miner ids seen per key since start, so a revoked key's leases can be handed back. */
  private readonly minersByKey = new Map<string, Set<string>>();
  private readonly pool: ResultBufferPool;
  private readonly results: ResultIntake;
  private readonly leaseFrames: LeaseFrames;
  private touchTimer: NodeJS.Timeout | undefined;
  readonly scheduler: Scheduler;

  constructor(private readonly ctx: CoordinatorContext) {
    this.pool = new ResultBufferPool(ctx.config.gateway.maxBufferedBytes);
    this.results = new ResultIntake(ctx);
    this.leaseFrames = new LeaseFrames(ctx);
    this.scheduler = new Scheduler(ctx, this);
  }

  /**
   * A miner opened a session on another replica (its epoch is newer): the session here, if any,
   * is fenced out and closed, as a reconnect on the same replica replaces the old connection.
   */
  onMinerSession(h: { minerId: string; epoch: number; replica: string }): void {
    if (h.replica === this.ctx.replica) return;
    const s = this.sessions.get(h.minerId);
    if (s === undefined || s.identity.epoch >= h.epoch) return;
    s.log.info({ epoch: s.identity.epoch, newer: h.epoch, replica: h.replica }, "miner reconnected to another replica: closing this session");
    this.sessions.delete(h.minerId);
    s.close(4000, "replaced by a new connection");
  }

  // ------------------------------------------------------------------ operator actions

  /** An operator's drain or undrain (already in the miners table), applied to this replica's session, if any. */
  setDrained(minerId: string, drained: boolean): void {
    const s = this.sessions.get(minerId);
    if (s === undefined || s.operatorDrained === drained) return;
    s.operatorDrained = drained;
    s.log.info({ drained }, drained ? "miner drained by an operator: no new jobs" : "miner undrained by an operator");
    if (!drained) this.scheduler.dispatch();
  }

  /**
   * An operator disconnects the miner: its connection here is closed and every lease it holds is
   * handed back at once (requeued without burning an attempt). The daemon reconnects with its
   * backoff; drain it first to keep it from taking jobs. False when its session is not here.
   */
  async disconnect(minerId: string): Promise<boolean> {
    const s = this.sessions.get(minerId);
    if (s === undefined) return false;
    s.log.warn("miner disconnected by an operator");
    this.sessions.delete(minerId);
    s.send({ type: "error", code: "disconnected", message: "disconnected by an operator", fatal: true });
    s.close(4001, "disconnected by an operator");
    const now = this.ctx.now();
    for (const job of await this.ctx.store.listLeasedBy(minerId)) {
      if (job.leaseToken === null) continue;
      const outcome = await this.ctx.store.releaseLease({ jobId: job.id, attempt: job.attempt, leaseToken: job.leaseToken, minerId }, now, "operator_disconnect");
      s.log.info({ jobId: job.id, attempt: job.attempt, outcome }, "lease of a disconnected miner handed back");
    }
    return true;
  }

  /** Each heartbeat: drains another replica applied while this one missed the hint. */
  private async refreshDrains(): Promise<void> {
    const ids = [...this.sessions.keys()];
    if (ids.length === 0) return;
    const drained = new Set(await this.ctx.store.drainedAmong(ids));
    for (const id of ids) this.setDrained(id, drained.has(id));
  }

  // ------------------------------------------------------------------ directory and fleet

  eligibleMiners(job: { model: string; requirements: Requirements }): Promise<number> {
    let n = 0;
    for (const s of this.sessions.values()) if (!s.draining && !s.operatorDrained && minerCanRun(job, s)) n += 1;
    return Promise.resolve(n);
  }

  connectedMiners(): Promise<number> {
    return Promise.resolve(this.sessions.size);
  }

  connected(): Promise<readonly Pick<MinerRecord, "models" | "gpus" | "draining">[]> {
    return Promise.resolve([...this.sessions.values()]);
  }

  /** Sessions coming and going, their draining flags and new advertised models change it. */
  version(): number {
    return this.directoryVersion;
  }

  capacity(job: { model: string; requirements: Requirements }): Promise<{ slots: number; busy: number }> {
    let slots = 0;
    let busy = 0;
    for (const s of this.sessions.values()) {
      if (s.draining || s.operatorDrained || !minerCanRun(job, s)) continue;
      slots += s.slots;
      busy += Math.min(s.slots, s.leases.size);
    }
    return Promise.resolve({ slots, busy });
  }

  /** Connected miners (for metrics and status). */
  miners(): MinerSession[] {
    return [...this.sessions.values()];
  }

  targets(): Iterable<MinerSession> {
    return this.sessions.values();
  }

  target(minerId: string): MinerSession | undefined {
    return this.sessions.get(minerId);
  }

  /** Bytes of result chunks buffered by all connections (for tests and metrics). */
  get bufferedResultBytes(): number {
    return this.pool.usedBytes;
  }

  // ------------------------------------------------------------------ lifecycle

  /** Registers the route; @fastify/websocket must already be registered on `app`. */
  register(app: FastifyInstance): void {
    app.route({
      method: "GET",
      url: MINER_GATEWAY_PATH,
      schema: { hide: true },
      preValidation: async (request: FastifyRequest, reply: FastifyReply) => {
        const token = bearerToken(request.headers.authorization);
        const key = token === undefined ? null : await this.ctx.store.authenticate(token, "miner");
        if (key === null) {
          void reply.header("WWW-Authenticate", 'Bearer realm="aitbc-miners"');
          return sendProblem(reply, problem(401, "unauthorized", "a valid miner key is required (Authorization: Bearer …)"));
        }
        const refusal = this.overLimit(key);
        if (refusal !== undefined) {
          void reply.header("Retry-After", "5");
          return sendProblem(reply, problem(refusal.status, refusal.code, refusal.message));
        }
        request.minerKey = key;
        return undefined;
      },
      handler: async (_request, reply) =>
        sendProblem(
          reply,
          problem(426, "upgrade_required", `${MINER_GATEWAY_PATH} is the miners' WebSocket gateway: connect with a WebSocket client (Upgrade: websocket) and a miner key`),
        ).header("Upgrade", "websocket"),
      wsHandler: (socket: WebSocket, request: FastifyRequest) => this.accept(socket, request.minerKey!),
    });
  }

  start(): void {
    this.scheduler.start();
    // The fleet's view of this replica's sessions, refreshed each heartbeat in one statement.
    this.touchTimer = setInterval(() => {
      const sessions = [...this.sessions.values()].map((s) => ({ id: s.minerId, epoch: s.identity.epoch, draining: s.draining, ...(s.gpuLoad === undefined ? {} : { gpuLoad: s.gpuLoad }) }));
      this.ctx.store
        .touchMiners(this.ctx.replica, sessions, this.ctx.now())
        .then(() => this.refreshDrains())
        .catch((err: unknown) => this.ctx.log.warn({ err: errorMessage(err) }, "refreshing the miners table failed"));
    }, this.ctx.config.scheduler.heartbeatMs);
    this.touchTimer.unref();
  }

  /** Tells every miner to stop pulling and closes the connections (leases stay: miners resume after a restart). */
  async stop(): Promise<void> {
    clearInterval(this.touchTimer);
    await this.scheduler.stop();
    for (const c of this.connections) {
      c.link.send({ type: "drain", reason: "coordinator_shutdown" });
      c.link.close(1001, "coordinator shutting down");
    }
    this.sessions.clear();
  }

  // ------------------------------------------------------------------ revocation

  keyIdsInUse(): Iterable<string> {
    return new Set([...this.connections].map((c) => c.key.id));
  }

  /** Closes the key's connections and hands back, at once, every lease its miners hold. */
  async revoked(keyId: string): Promise<void> {
    for (const c of this.connections) {
      if (c.key.id !== keyId) continue;
      c.log.warn("miner key revoked: closing the connection");
      c.link.fatal("key_revoked", "this miner key was revoked");
    }
    const now = this.ctx.now();
    for (const minerId of this.minersByKey.get(keyId) ?? []) {
      for (const job of await this.ctx.store.listLeasedBy(minerId)) {
        if (job.leaseToken === null) continue;
        const outcome = await this.ctx.store.releaseLease({ jobId: job.id, attempt: job.attempt, leaseToken: job.leaseToken, minerId }, now, "key_revoked");
        this.ctx.log.info({ jobId: job.id, attempt: job.attempt, minerId, outcome }, "lease of a revoked miner key handed back");
      }
    }
  }

  // ------------------------------------------------------------------ connections

  private overLimit(key: ApiKeyRecord): { status: number; code: string; message: string } | undefined {
    const g = this.ctx.config.gateway;
    const until = this.cooling.get(key.id);
    if (until !== undefined) {
      if (this.ctx.now() < until) {
        return { status: 429, code: "rate_limited", message: `a connection of this miner key spent its frame budget; connect again after ${new Date(until).toISOString()}` };
      }
      this.cooling.delete(key.id);
    }
    if (this.connections.size >= g.maxConnections) {
      return { status: 503, code: "too_many_connections", message: `the gateway holds its maximum of ${g.maxConnections} connections` };
    }
    if ((this.perKey.get(key.id) ?? 0) >= g.maxConnectionsPerKey) {
      return { status: 429, code: "too_many_connections", message: `this miner key already holds ${g.maxConnectionsPerKey} connections ([gateway] max_connections_per_key)` };
    }
    return undefined;
  }

  private accept(socket: WebSocket, key: ApiKeyRecord): void {
    const log = this.ctx.log.child({ component: "gateway", keyId: key.id });
    const g = this.ctx.config.gateway;
    const conn: Connection = {
      key,
      log,
      link: new MinerLink({
        socket,
        log,
        budget: new FrameBudget(g, this.ctx.now()),
        maxQueued: g.frameBurst * 2,
        pingIntervalMs: this.ctx.config.scheduler.heartbeatMs,
        maxMissedPongs: g.maxMissedPongs,
        helloTimeoutMs: HELLO_TIMEOUT_MS,
        now: this.ctx.now,
        onFrame: (frame) => this.onFrame(conn, frame),
        onFailure: (err, frame) => this.onFailure(conn, err, frame),
        onClose: (code) => this.onClose(conn, code),
        onOverBudget: () => this.cooling.set(key.id, this.ctx.now() + g.rateLimitCooldownMs),
      }),
    };
    // Re-checked here: upgrades that passed preValidation together may not all fit.
    const refusal = this.overLimit(key);
    this.connections.add(conn);
    this.perKey.set(key.id, (this.perKey.get(key.id) ?? 0) + 1);
    if (refusal !== undefined) conn.link.fatal(refusal.code, refusal.message, TRY_AGAIN_LATER);
  }

  private onClose(conn: Connection, code: number): void {
    this.connections.delete(conn);
    const n = (this.perKey.get(conn.key.id) ?? 1) - 1;
    if (n > 0) this.perKey.set(conn.key.id, n);
    else this.perKey.delete(conn.key.id);
    const s = conn.session;
    if (s === undefined) return;
    // Frames already accepted on this connection (a result whose chunks are buffered) still run.
    void conn.link.drained().then(() => s.chunks.clear());
    if (this.sessions.get(s.minerId) === s) {
      this.sessions.delete(s.minerId);
      s.log.info({ code, leases: s.leases.size }, "miner disconnected");
    }
    // Only this epoch's row: a newer session (here or on another replica) is left as it is.
    this.ctx.store.closeMinerSession(s.minerId, s.identity.epoch, this.ctx.now()).catch((err: unknown) => s.log.warn({ err: errorMessage(err) }, "recording the disconnect failed"));
  }

  private onFailure(conn: Connection, err: unknown, frame: MinerFrame): void {
    const jobId = "job_id" in frame ? frame.job_id : undefined;
    if (!(err instanceof UnavailableError)) {
      conn.log.error({ err: errorMessage(err), type: frame.type, jobId }, "frame handling failed");
      return;
    }
    if (!ANSWERED_FRAMES.has(frame.type)) {
      conn.log.warn({ err: errorMessage(err), frame: frame.type, jobId }, "storage unavailable: frame not recorded");
      return;
    }
    conn.log.warn({ err: errorMessage(err), frame: frame.type, jobId }, "storage unavailable: miner to retry");
    conn.link.fatal("unavailable", "storage is temporarily unavailable: reconnect and resend", TRY_AGAIN_LATER);
  }

  private async onFrame(conn: Connection, frame: MinerFrame): Promise<void> {
    if (frame.type === "hello") {
      if (conn.session !== undefined) return conn.link.refuse("frame_invalid", "hello was already sent");
      conn.session = await this.hello(conn, frame);
      return;
    }
    const s = conn.session;
    if (s === undefined) return conn.link.refuse("frame_invalid", "the first frame must be hello");
    switch (frame.type) {
      case "pull": {
        const pull = ++s.pulls;
        s.setCredits(frame.free_slots);
        this.scheduler.dispatch();
        // A pull usually follows the result that freed its slot, whose lease still counts until
        // that result is committed (its own lane, not before this): the pull is applied again then.
        if (s.credits >= frame.free_slots) return;
        void conn.link.jobFramesHandled().then(() => {
          if (s.pulls !== pull) return;
          s.setCredits(frame.free_slots);
          this.scheduler.dispatch();
        });
        return;
      }
      case "started":
        return this.leaseFrames.markStarted(s, frame);
      case "progress":
      case "text":
        return this.leaseFrames.progress(s, frame);
      case "heartbeat":
        return this.leaseFrames.heartbeat(s, frame);
      case "result_chunk":
        return this.results.chunk(s, frame);
      case "result":
        return this.results.result(s, frame);
      case "fail":
        return this.leaseFrames.fail(s, frame);
      case "released":
        return this.leaseFrames.released(s, frame);
      case "error":
        s.log.warn({ code: frame.code, fatal: frame.fatal }, "miner reported an error");
        return;
    }
  }

  // ------------------------------------------------------------------ hello

  private async hello(conn: Connection, hello: HelloFrame): Promise<MinerSession | undefined> {
    const { link, key, log } = conn;
    if (hello.protocol_version < OLDEST_PROTOCOL_VERSION || hello.protocol_version > PROTOCOL_VERSION) {
      link.fatal("protocol_version", `this coordinator speaks protocol ${OLDEST_PROTOCOL_VERSION}–${PROTOCOL_VERSION}, not ${hello.protocol_version}`);
      return undefined;
    }
    if (hello.protocol_version >= 5 && hello.instance_id === undefined) {
      link.fatal("frame_invalid", `a protocol ${hello.protocol_version} hello carries instance_id`);
      return undefined;
    }
    link.helloDone();
    const minerId = `miner_${createHash("sha256").update(`${key.id}:${hello.miner_name}`).digest("hex").slice(0, 16)}`;
    const slog = log.child({ minerId });
    const clamped = clampHello(hello, this.ctx.config.gateway);
    if (clamped.notes.length > 0) slog.warn({ clamped: clamped.notes }, "implausible hello figures clamped");
    // For waiting reasons: a model no miner ever advertised here is "unknown" (bounded set).
    for (const m of hello.models) {
      if (this.ctx.advertisedModels.size >= 10_000 || this.ctx.advertisedModels.has(m)) continue;
      this.ctx.advertisedModels.add(m);
      this.bumpVersion();
    }
    // The fleet learns of the session first (its epoch fences older sessions out, on every replica).
    const now = this.ctx.now();
    const opening = { id: minerId, keyId: key.id, name: hello.miner_name, replica: this.ctx.replica, instanceId: hello.instance_id ?? null, gpus: clamped.value.gpus, models: hello.models, slots: clamped.value.slots };
    let opened = await this.ctx.store.openMinerSession(opening, now, now - this.liveWindowMs);
    if (!opened.opened && opened.holder.replica === this.ctx.replica && !this.sessions.has(minerId)) {
      // The row names this replica, which holds no such session: it is left from this replica's
      // previous run (a restart that could not close it), not a live holder. Take it over.
      slog.info({ holderInstanceId: opened.holder.instanceId }, "miner row left by this replica's previous run taken over");
      opened = await this.ctx.store.openMinerSession(opening, now, Number.MAX_SAFE_INTEGER);
    }
    if (!opened.opened) {
      this.refuseDuplicate(link, slog, hello, opened.holder, now);
      return undefined;
    }
    const epoch = opened.epoch;
    const previous = this.sessions.get(minerId);
    if (previous !== undefined) previous.close(4000, "replaced by a new connection");
    // An operator's drain outlives sessions: the new one starts drained too.
    const drained = (await this.ctx.store.getMiner(minerId))?.drained ?? false;
    const session = new MinerSession(
      { minerId, keyId: key.id, name: hello.miner_name, gpus: clamped.value.gpus, models: hello.models, slots: clamped.value.slots, protocolVersion: hello.protocol_version, epoch },
      link,
      new ChunkBuffer(this.pool, this.ctx.config.gateway.maxBufferedBytesPerConnection),
      slog,
      this.bumpVersion,
    );
    session.operatorDrained = drained;
    this.sessions.set(minerId, session);
    const known = this.minersByKey.get(key.id) ?? new Set<string>();
    known.add(minerId);
    this.minersByKey.set(key.id, known);
    try {
      await this.resume(session, hello);
    } catch (err) {
      // No welcome: the connection is closed next, and no session may outlive it.
      if (this.sessions.get(minerId) === session) this.sessions.delete(minerId);
      throw err;
    }
    return session;
  }

  /**
   * How recently a session's row must have been refreshed to count as live: the holder's replica
   * refreshes it every heartbeat and closes it after max_missed_pongs silent ones, so a row older
   * than that is a session whose replica died without closing it.
   */
  private get liveWindowMs(): number {
    return this.ctx.config.scheduler.heartbeatMs * (this.ctx.config.gateway.maxMissedPongs + 1);
  }

  /** A second miner process under a live session's key and name: refused, logged, counted. */
  private refuseDuplicate(link: MinerLink, slog: Logger, hello: HelloFrame, holder: { instanceId: string; replica: string | null; lastSeenAt: number | null }, now: number): void {
    this.ctx.metrics.duplicateMiners.inc();
    slog.warn(
      { name: hello.miner_name, instanceId: hello.instance_id, holderInstanceId: holder.instanceId, holderReplica: holder.replica },
      "duplicate miner refused: another instance holds this key and name",
    );
    const seen = holder.lastSeenAt === null ? "" : `, seen ${Math.max(0, Math.round((now - holder.lastSeenAt) / 1000))} s ago`;
    link.fatal(
      DUPLICATE_MINER,
      `miner name "${hello.miner_name}" is held by another instance (${holder.instanceId}) connected with this key${holder.replica === null ? "" : ` to replica ${holder.replica}`}${seen}: ` +
        "give each host its own [miner] name (or key), or stop the other one",
      DUPLICATE_MINER_CLOSE,
    );
  }

  /** Resumes the leases the hello lists, gives up those it forgot, and sends the welcome. */
  private async resume(session: MinerSession, hello: HelloFrame): Promise<void> {
    const { minerId, log: slog } = session;
    const { leaseTtlMs, heartbeatMs } = this.ctx.config.scheduler;
    const now = this.ctx.now();
    const welcome: WelcomeFrame = { type: "welcome", miner_id: minerId, heartbeat_ms: heartbeatMs, lease_ttl_ms: leaseTtlMs, resumed: [], refused: [] };
    const claimed = new Set<string>();
    // A miner holds at most its slots running plus their results waiting for an ack: entries past
    // that are refused without a store read, so one hello cannot cost thousands of them.
    const most = Math.max(8, 2 * session.slots);
    for (const f of hello.in_flight) {
      const key = leaseKey(f.job_id, f.attempt);
      if (claimed.has(key)) continue;
      claimed.add(key);
      if (claimed.size > most) {
        welcome.refused.push({ job_id: f.job_id, attempt: f.attempt, reason: "over_slots" });
        continue;
      }
      const r = await this.ctx.store.renewLease({ jobId: f.job_id, attempt: f.attempt, leaseToken: f.lease_token, minerId }, now, leaseTtlMs);
      const job = await this.ctx.store.getJobById(f.job_id);
      if (r.renewed && job !== null) {
        welcome.resumed.push({ job_id: f.job_id, attempt: f.attempt, lease_token: f.lease_token, lease_expires_at: new Date(now + leaseTtlMs).toISOString() });
        session.hold({ jobId: f.job_id, attempt: f.attempt, leaseToken: f.lease_token, maxTokens: job.parameters.max_new_tokens, renewedAt: now });
        if (r.cancelRequested) this.scheduler.tellStop(minerId, f.job_id, f.attempt, "cancelled");
      } else {
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
    // Every accepted protocol (4 and 5) gets the same welcome.
    welcome.replica = this.ctx.replica;
    welcome.protocol_version = Math.min(hello.protocol_version, PROTOCOL_VERSION);
    session.send(welcome);
    slog.info(
      {
        name: hello.miner_name,
        protocol: hello.protocol_version,
        instanceId: hello.instance_id,
        replica: this.ctx.replica,
        gpus: session.gpus.length,
        models: hello.models,
        slots: session.slots,
        resumed: welcome.resumed.length,
        refused: welcome.refused.length,
      },
      "miner connected",
    );
  }
}

/** The sessions by miner id; each set or delete is a change of the directory. */
class SessionTable extends Map<string, MinerSession> {
  constructor(private readonly changed: () => void) {
    super();
  }

  override set(minerId: string, session: MinerSession): this {
    this.changed();
    return super.set(minerId, session);
  }

  override delete(minerId: string): boolean {
    const had = super.delete(minerId);
    if (had) this.changed();
    return had;
  }

  override clear(): void {
    if (this.size > 0) this.changed();
    super.clear();
  }
}
