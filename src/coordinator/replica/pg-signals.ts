import pg from "pg";
import { Backoff } from "../../common/backoff.js";
import { errorMessage } from "../../common/errors.js";
import type { Logger } from "../../common/logger.js";
import type { JobEvents, ProgressEvent, TextEvent } from "../store/job-events.js";
import { JOB_CHANNEL, type PgDb } from "../store/postgres/pg-db.js";
import { CONTROL_CHANNEL } from "../store/postgres/verbs/miners.js";

/** A miner's session opened on some replica (its epoch fences older sessions out). */
export interface MinerSessionHint {
  minerId: string;
  epoch: number;
  replica: string;
}

/** An operator's action on a miner, for the replica holding its session. */
export type MinerControl = { kind: "drain"; minerId: string; drained: boolean } | { kind: "disconnect"; minerId: string };

/** Under NOTIFY's 8000-byte payload limit, with room to spare. */
const MAX_PAYLOAD = 7_000;
/**
 * The generated text's own channel (never the job-state one, whose payloads carry no text).
 * Pieces travel in slices of at most TEXT_SLICE code units: JSON escapes a code unit into at most
 * 6 bytes, so a slice always fits a payload with its header.
 */
export const TEXT_CHANNEL = "aitbc_text";
const TEXT_SLICE = 1_000;
/** Text of this replica's miners goes out this often, coalesced. */
const TEXT_FLUSH_MS = 25;
/** A replica asks again for a job's whole text at most this often. */
const WANT_EVERY_MS = 1_000;

interface TextPiece {
  j: string;
  a: number;
  i: number;
  d: string;
}

/**
 * Signals between replicas over PostgreSQL LISTEN/NOTIFY, as hints only: a notification wakes a
 * replica to re-read the store, never carries what it must not lose. Job-state changes (sent by
 * the store inside the committing transaction, `{j, s, t, o}`) become JobEvents remote changes;
 * miner sessions opened elsewhere (`{k: "miner"}`) and operators' drains and disconnects
 * (`{k: "drain" | "disconnect", id}`) go to the gateway; a key's revocation (`{k: "revoke", id}`)
 * drops the key's row this replica keeps (PgDbOptions.keyCacheMs); progress of running jobs
 * goes out once a second per replica, batched (`{k: "progress", p: [...]}`), never per frame.
 *
 * The generated text of running jobs has its own channel (TEXT_CHANNEL): pieces from this
 * replica's miners, coalesced every TEXT_FLUSH_MS and sliced under NOTIFY's payload limit
 * (`{o, p: [{j, a, i, d}]}`). A replica that follows a job whose text it lacks (a client joined
 * late, a piece was missed) asks for it (`{o, want: jobId}`) and the replica holding the miner
 * sends the whole text from index 0.
 *
 * `pg`'s listening client does not reconnect by itself and notifications sent while it is away
 * are lost: this one reconnects with the shared backoff and, each time it is back, asks every
 * listener to re-read (JobEvents resync); a periodic resync covers anything else missed.
 */
export class PgSignals {
  private client: pg.Client | undefined;
  private stopped = false;
  private readonly backoff = new Backoff({ baseMs: 200, maxMs: 5_000 });
  private reconnectTimer: NodeJS.Timeout | undefined;
  private resyncTimer: NodeJS.Timeout | undefined;
  private progressTimer: NodeJS.Timeout | undefined;
  private readonly outbox = new Map<string, ProgressEvent>();
  private textOutbox: TextPiece[] = [];
  private textTimer: NodeJS.Timeout | undefined;
  /** The last text flush (see flushText). */
  private textSent: Promise<void> = Promise.resolve();
  private readonly wanted = new Map<string, number>();
  private unsubscribeText: (() => void)[] = [];
  private readonly minerHandlers = new Set<(h: MinerSessionHint) => void>();
  private readonly controlHandlers = new Set<(c: MinerControl) => void>();
  private connected = false;
  /** Progress of jobs running on this replica's miners goes to the outbox, sent once a second. */
  private unsubscribe: (() => void) | undefined;

  constructor(
    private readonly deps: { db: PgDb; url: string; schema: string; events: JobEvents; replica: string; log: Logger; resyncMs: number },
  ) {}

  /** Whether the listening connection is up (readiness). */
  get listening(): boolean {
    return this.connected;
  }

  async start(): Promise<void> {
    this.unsubscribe = this.deps.events.onLocalProgress((p) => this.outbox.set(p.jobId, p));
    this.unsubscribeText = [
      this.deps.events.onLocalText((t) => this.queueText(t)),
      this.deps.events.onWantText((jobId) => this.want(jobId)),
      this.deps.events.onSendPendingText(() => this.flushText()),
    ];
    await this.connect();
    this.resyncTimer = setInterval(() => this.deps.events.publishResync(), this.deps.resyncMs);
    this.resyncTimer.unref();
    this.progressTimer = setInterval(() => void this.flushProgress(), 1_000);
    this.progressTimer.unref();
  }

  onMinerSession(fn: (h: MinerSessionHint) => void): void {
    this.minerHandlers.add(fn);
  }

  /** Operator actions on miners (a drain is sent by the store with its commit; a disconnect by disconnectElsewhere). */
  onMinerControl(fn: (c: MinerControl) => void): void {
    this.controlHandlers.add(fn);
  }

  /** Asks the other replicas to close this miner's session (the one holding it does). */
  async disconnectElsewhere(minerId: string): Promise<void> {
    await this.deps.db.query("SELECT pg_notify($1, $2)", [CONTROL_CHANNEL, JSON.stringify({ k: "disconnect", id: minerId, o: this.deps.replica })]);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.unsubscribe?.();
    for (const u of this.unsubscribeText) u();
    clearTimeout(this.textTimer);
    clearTimeout(this.reconnectTimer);
    clearInterval(this.resyncTimer);
    clearInterval(this.progressTimer);
    await this.client?.end().catch(() => undefined);
  }

  private async connect(): Promise<void> {
    if (this.stopped) return;
    const client = new pg.Client({ connectionString: this.deps.url, connectionTimeoutMillis: 3_000, application_name: `aitbc-listen ${this.deps.replica}` });
    this.client = client;
    const lost = (why: string): void => {
      if (this.client !== client || this.stopped) return;
      this.connected = false;
      this.client = undefined;
      client.end().catch(() => undefined);
      const delay = this.backoff.next();
      this.deps.log.warn({ why, delayMs: delay }, "lost the LISTEN connection: reconnecting");
      this.reconnectTimer = setTimeout(() => void this.connect(), delay);
    };
    client.on("error", (err) => lost(err.message));
    client.on("end", () => lost("connection ended"));
    client.on("notification", (n) => this.notified(n.channel, n.payload));
    try {
      await client.connect();
      await client.query(`LISTEN ${JOB_CHANNEL}`);
      await client.query(`LISTEN ${CONTROL_CHANNEL}`);
      await client.query(`LISTEN ${TEXT_CHANNEL}`);
    } catch (err) {
      lost(errorMessage(err));
      return;
    }
    const wasDown = this.backoff.attempts > 0;
    this.connected = true;
    this.backoff.reset();
    if (wasDown) this.deps.log.info("LISTEN connection back: re-reading what was followed");
    // Anything sent while we were away is lost: re-dispatch and re-read every open stream.
    this.deps.events.publishResync();
  }

  private notified(channel: string, payload: string | undefined): void {
    if (payload === undefined) return;
    let msg: unknown;
    try {
      msg = JSON.parse(payload);
    } catch {
      return;
    }
    if (typeof msg !== "object" || msg === null) return;
    const m = msg as Record<string, unknown>;
    if (channel === TEXT_CHANNEL) {
      if (m.o !== this.deps.replica) this.textNotified(m);
      return;
    }
    if (channel === JOB_CHANNEL) {
      // Our own changes were published in this process after their commit.
      if (m.o === this.deps.replica) return;
      if (typeof m.j === "string" && typeof m.s === "number" && typeof m.t === "string") this.deps.events.publishRemote({ jobId: m.j, seq: m.s, type: m.t });
      return;
    }
    if (m.k === "miner" && typeof m.id === "string" && typeof m.e === "number" && typeof m.r === "string") {
      for (const fn of this.minerHandlers) fn({ minerId: m.id, epoch: m.e, replica: m.r });
    } else if (m.k === "drain" && typeof m.id === "string" && typeof m.d === "boolean") {
      for (const fn of this.controlHandlers) fn({ kind: "drain", minerId: m.id, drained: m.d });
    } else if (m.k === "revoke" && typeof m.id === "string") {
      this.deps.db.forgetKey(m.id);
    } else if (m.k === "disconnect" && typeof m.id === "string" && m.o !== this.deps.replica) {
      for (const fn of this.controlHandlers) fn({ kind: "disconnect", minerId: m.id });
    } else if (m.k === "progress" && m.o !== this.deps.replica && Array.isArray(m.p)) {
      for (const item of m.p as unknown[]) {
        const p = item as Partial<Record<string, unknown>>;
        if (typeof p.j !== "string" || typeof p.a !== "number" || typeof p.p !== "number") continue;
        this.deps.events.publishProgress({
          jobId: p.j,
          attempt: p.a,
          progress: p.p,
          tokens: typeof p.t === "number" ? p.t : 0,
          maxTokens: typeof p.m === "number" ? p.m : 0,
          tokensPerSecond: typeof p.r === "number" ? p.r : 0,
          at: Date.now(),
        }, true);
      }
    }
  }

  private queueText(t: TextEvent): void {
    const last = this.textOutbox[this.textOutbox.length - 1];
    // Consecutive pieces of one attempt coalesce into one.
    if (last !== undefined && last.j === t.jobId && last.a === t.attempt && last.i + last.d.length === t.index) last.d += t.delta;
    else this.textOutbox.push({ j: t.jobId, a: t.attempt, i: t.index, d: t.delta });
    if (this.textTimer === undefined) {
      this.textTimer = setTimeout(() => void this.flushText(), TEXT_FLUSH_MS);
      this.textTimer.unref();
    }
  }

  private want(jobId: string): void {
    const now = Date.now();
    if ((this.wanted.get(jobId) ?? 0) > now - WANT_EVERY_MS) return;
    this.wanted.set(jobId, now);
    if (this.wanted.size > 10_000) for (const [j, at] of this.wanted) if (at <= now - WANT_EVERY_MS) this.wanted.delete(j);
    void this.notify(TEXT_CHANNEL, [JSON.stringify({ o: this.deps.replica, want: jobId })]);
  }

  private textNotified(m: Record<string, unknown>): void {
    if (typeof m.want === "string") {
      const live = this.deps.events.liveText(m.want);
      if (live?.local === true) this.queueText({ jobId: m.want, attempt: live.attempt, index: 0, delta: live.text });
      return;
    }
    if (!Array.isArray(m.p)) return;
    for (const item of m.p as unknown[]) {
      const p = item as Partial<Record<string, unknown>>;
      if (typeof p.j !== "string" || typeof p.a !== "number" || typeof p.i !== "number" || typeof p.d !== "string") continue;
      if (this.deps.events.publishText({ jobId: p.j, attempt: p.a, index: p.i, delta: p.d }, true) === "gap" && this.deps.events.followsText(p.j)) this.want(p.j);
    }
  }

  /**
   * Sends the text outbox now. Flushes go out one after another (each after the one before it
   * is done), so pieces reach other replicas in the order they came, and a caller that awaits
   * one (sendPendingText, before a result's commit) knows every piece before it is out too.
   */
  private flushText(): Promise<void> {
    clearTimeout(this.textTimer);
    this.textTimer = undefined;
    const pieces = this.textOutbox;
    this.textOutbox = [];
    const payloads = this.packText(pieces);
    // notify() never rejects: a failed send is logged and dropped (text is a hint too).
    this.textSent = this.textSent.then(() => (payloads.length === 0 ? undefined : this.notify(TEXT_CHANNEL, payloads)));
    return this.textSent;
  }

  /** Pieces as NOTIFY payloads under MAX_PAYLOAD bytes each. */
  private packText(pieces: TextPiece[]): string[] {
    const payloads: string[] = [];
    let batch: TextPiece[] = [];
    const pack = (b: TextPiece[]): string => JSON.stringify({ o: this.deps.replica, p: b });
    for (const piece of pieces) {
      for (const slice of sliceText(piece)) {
        if (batch.length > 0 && Buffer.byteLength(pack([...batch, slice])) > MAX_PAYLOAD) {
          payloads.push(pack(batch));
          batch = [];
        }
        batch.push(slice);
      }
    }
    if (batch.length > 0) payloads.push(pack(batch));
    return payloads;
  }

  private async notify(channel: string, payloads: string[]): Promise<void> {
    if (!this.connected) return;
    try {
      await this.deps.db.query("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p", [channel, payloads]);
    } catch (err) {
      this.deps.log.debug({ err: errorMessage(err), channel }, "notification not sent");
    }
  }

  private async flushProgress(): Promise<void> {
    if (this.outbox.size === 0 || !this.connected) return;
    const items = [...this.outbox.values()].map((p) => ({ j: p.jobId, a: p.attempt, p: Math.round(p.progress * 10) / 10, t: p.tokens, m: p.maxTokens, r: Math.round(p.tokensPerSecond * 10) / 10 }));
    this.outbox.clear();
    const payloads: string[] = [];
    let batch: typeof items = [];
    const pack = (b: typeof items): string => JSON.stringify({ k: "progress", o: this.deps.replica, p: b });
    for (const item of items) {
      if (pack([...batch, item]).length > MAX_PAYLOAD && batch.length > 0) {
        payloads.push(pack(batch));
        batch = [];
      }
      batch.push(item);
    }
    if (batch.length > 0) payloads.push(pack(batch));
    try {
      await this.deps.db.query("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p", [CONTROL_CHANNEL, payloads]);
    } catch (err) {
      this.deps.log.debug({ err: errorMessage(err) }, "progress notification not sent");
    }
  }
}

/** A piece in slices of at most TEXT_SLICE code units, never splitting a surrogate pair. */
function sliceText(piece: TextPiece): TextPiece[] {
  if (piece.d.length <= TEXT_SLICE) return [piece];
  const out: TextPiece[] = [];
  for (let off = 0; off < piece.d.length; ) {
    let end = Math.min(piece.d.length, off + TEXT_SLICE);
    const last = piece.d.charCodeAt(end - 1);
    if (end < piece.d.length && last >= 0xd800 && last <= 0xdbff) end--;
    out.push({ j: piece.j, a: piece.a, i: piece.i + off, d: piece.d.slice(off, end) });
    off = end;
  }
  return out;
}
