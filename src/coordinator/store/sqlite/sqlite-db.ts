import { mkdirSync } from "node:fs";
import path from "node:path";
import Database from "better-sqlite3";
import { UnavailableError } from "../../../common/errors.js";
import type { JobEvents } from "../job-events.js";
import { storedResult, type JobRow } from "../job-row.js";
import type { JobEvent, StoredResult } from "../job-store.js";
import { CANCELLED_BY_CLIENT, minerTally, timedOut, type FailDecision, type MinerTally } from "../transitions.js";
import { SQLITE_MIGRATIONS } from "./migrations.js";

/** Appends an event to the job's log inside the current transaction (published after commit). */
export type Emit = (e: Omit<JobEvent, "seq">) => void;

export type TerminalStatus = "completed" | "failed" | "cancelled" | "timed_out" | "expired";

/**
 * The one SQLite connection (better-sqlite3) and what every verb module shares: prepared
 * statements, the write transaction that appends events and publishes them after the commit,
 * and the writes several verbs make (a job finishing, a job requeued, stored bytes counted).
 * better-sqlite3 is synchronous, so a transaction cannot interleave with another: each verb is
 * atomic. WAL with synchronous=FULL: a commit is on disk before it returns.
 */
export class SqliteDb {
  readonly db: Database.Database;
  private closed = false;
  /** Prepared statements, compiled once per SQL text (preparing dominated cheap reads). */
  private readonly statements = new Map<string, Database.Statement>();
  /** Reads kept by cachedRead, all valid for one (own writes, data version) pair. */
  private readonly readCache = new Map<string, unknown>();
  /**
   * Executions of writing statements on this connection (every statement that is not read-only
   * is prepared through sql(), which counts them): what total_changes() told cachedRead, without
   * a SQLite call per cached read (three of them were a tenth of a status read's time).
   */
  private ownWrites = 0;
  private cachedAt = { changes: -1, dataVersion: -1 };
  /** Bumped with each new cachedAt pair (readGeneration). */
  private generation = 0;
  /** data_version as last read, and whether it was read in this event-loop turn. */
  private dataVersion = -1;
  private dataVersionFresh = false;
  /**
   * Runs a function in a transaction (`.immediate` for BEGIN IMMEDIATE; called inside one, a
   * savepoint). Made once: better-sqlite3 builds a wrapper per `transaction()` call, a measurable
   * part of a grouped submit when made per job.
   */
  private readonly inTransaction: Database.Transaction<(fn: () => unknown) => unknown>;
  /** Grouped transactions waiting for the next turn's shared commit (txGrouped). */
  private readonly group: { fn: (emit: Emit) => unknown; resolve: (v: unknown) => void; reject: (err: unknown) => void }[] = [];

  constructor(
    file: string,
    readonly events: JobEvents,
  ) {
    if (file !== ":memory:") mkdirSync(path.dirname(file), { recursive: true });
    // A short busy timeout: better-sqlite3 waits synchronously, so a lock held by another
    // process (a backup, `aitbc keys`) would stall the event loop for this long; past it the
    // request gets 503 + Retry-After instead.
    this.db = new Database(file, { timeout: 250 });
    this.db.pragma("journal_mode = WAL");
    this.db.pragma("synchronous = FULL");
    this.db.pragma("foreign_keys = ON");
    // Statement journals (every INSERT into jobs has one: its triggers keep queue_counts) in
    // memory, not in a temporary file each: a submit's insert went from ~29 to ~15 µs.
    this.db.pragma("temp_store = MEMORY");
    this.inTransaction = this.db.transaction((fn: () => unknown) => fn());
    this.migrate();
  }

  sql(text: string): Database.Statement {
    let stmt = this.statements.get(text);
    if (stmt === undefined) {
      stmt = this.db.prepare(text);
      if (!stmt.readonly) this.countWrites(stmt);
      this.statements.set(text, stmt);
    }
    return stmt;
  }

  /** Each execution of a writing statement counts as a write (even one that fails or is rolled back: the cache only drops more). */
  private countWrites(stmt: Database.Statement): void {
    const s = stmt as unknown as Record<"run" | "get" | "all" | "iterate", (...args: unknown[]) => unknown>;
    for (const m of ["run", "get", "all", "iterate"] as const) {
      const f = s[m].bind(stmt);
      s[m] = (...args: unknown[]) => {
        this.ownWrites += 1;
        return f(...args);
      };
    }
  }

  private migrate(): void {
    this.db.exec("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)");
    const applied = new Set((this.sql("SELECT version FROM schema_migrations").all() as { version: number }[]).map((r) => r.version));
    for (const [i, sql] of SQLITE_MIGRATIONS.entries()) {
      const version = i + 1;
      if (applied.has(version)) continue;
      this.db.transaction(() => {
        this.db.exec(sql);
        this.sql("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)").run(version, Date.now());
      })();
    }
  }

  /** A read outside a write transaction; storage faults become 503s. */
  read<T>(fn: () => T): T {
    if (this.closed) throw new UnavailableError("the job store is closed");
    try {
      return fn();
    } catch (err) {
      throw storageError(err);
    }
  }

  /**
   * A number that changes whenever anything in the database may have changed, by the rule
   * cachedRead keeps its reads by: what a caller may key its own copies of read results on.
   */
  readGeneration(): number {
    return this.read(() => this.checkGeneration());
  }

  /** Reads data_version once per event-loop turn; a new (own writes, data version) pair starts a new generation and empties the read cache. */
  private checkGeneration(): number {
    if (!this.dataVersionFresh) {
      this.dataVersion = (this.sql("SELECT data_version AS v FROM pragma_data_version").get() as { v: number }).v;
      this.dataVersionFresh = true;
      setImmediate(() => (this.dataVersionFresh = false));
    }
    if (this.ownWrites !== this.cachedAt.changes || this.dataVersion !== this.cachedAt.dataVersion) {
      this.readCache.clear();
      this.cachedAt = { changes: this.ownWrites, dataVersion: this.dataVersion };
      this.generation += 1;
    }
    return this.generation;
  }

  /**
   * A read whose result is kept until anything in the database may have changed: a writing
   * statement run on this connection (counted by sql(), see ownWrites) or a commit by another
   * process (`PRAGMA data_version`, e.g. `aitbc keys revoke`). data_version costs as much as the row read it saves, so it is read
   * once per event-loop turn: a request sees other processes' commits made before its turn
   * began. For the hot client reads (a job's status polled, the key of every request); under a
   * stream of writes the cache simply misses. `key` must name the read and its arguments.
   */
  cachedRead<T>(key: string, fn: () => T): T {
    return this.read(() => {
      this.checkGeneration();
      if (this.readCache.has(key)) return this.readCache.get(key) as T;
      const value = fn();
      if (this.readCache.size >= READ_CACHE_ENTRIES) this.readCache.clear();
      this.readCache.set(key, value);
      return value;
    });
  }

  /**
   * Runs fn in an IMMEDIATE transaction; storage faults become 503s, and the events it emitted
   * are published after the commit. A job's events are numbered 1..n: the connection is the only
   * writer, so the next number is one past the last.
   */
  tx<T>(fn: (emit: Emit) => T): T {
    if (this.closed) throw new UnavailableError("the job store is closed");
    const pending: JobEvent[] = [];
    const emit = this.emitter(pending);
    let out: T;
    try {
      out = this.inTransaction.immediate(() => fn(emit)) as T;
    } catch (err) {
      throw storageError(err);
    }
    for (const e of pending) this.events.publish(e);
    return out;
  }

  private emitter(pending: JobEvent[]): Emit {
    return (e) => {
      const row = this.sql("SELECT COALESCE(MAX(seq), 0) + 1 AS seq FROM job_events WHERE job_id = ?").get(e.jobId) as { seq: number };
      this.sql("INSERT INTO job_events (job_id, seq, type, data, at) VALUES (?, ?, ?, ?, ?)").run(e.jobId, row.seq, e.type, JSON.stringify(e.data), e.at);
      pending.push({ ...e, seq: row.seq });
    };
  }

  /**
   * Group commit: like tx, but fn runs at the next turn of the event loop together with every
   * other grouped transaction asked for before it, each in its own savepoint inside one IMMEDIATE
   * transaction, so all of them share one durable commit (one fsync of the WAL instead of one
   * each). A fn that throws rolls back its savepoint only, and only its promise rejects; each
   * promise settles after the shared commit (accepted still means durable). A failed commit
   * rejects them all.
   */
  txGrouped<T>(fn: (emit: Emit) => T): Promise<T> {
    if (this.closed) return Promise.reject(new UnavailableError("the job store is closed"));
    return new Promise<T>((resolve, reject) => {
      this.group.push({ fn, resolve: resolve as (v: unknown) => void, reject });
      if (this.group.length === 1) setImmediate(() => this.flushGroup());
    });
  }

  private flushGroup(): void {
    const batch = this.group.splice(0);
    if (batch.length === 0) return;
    if (this.closed) {
      for (const g of batch) g.reject(new UnavailableError("the job store is closed"));
      return;
    }
    const outcomes: ({ ok: true; value: unknown; events: JobEvent[] } | { ok: false; err: unknown })[] = [];
    try {
      this.inTransaction.immediate(() => {
        for (const g of batch) {
          const events: JobEvent[] = [];
          try {
            // Nested: a savepoint of its own, rolled back alone when fn throws.
            const value = this.inTransaction(() => g.fn(this.emitter(events)));
            outcomes.push({ ok: true, value, events });
          } catch (err) {
            outcomes.push({ ok: false, err });
          }
        }
      });
    } catch (err) {
      for (const g of batch) g.reject(storageError(err));
      return;
    }
    batch.forEach((g, i) => {
      const o = outcomes[i]!;
      if (!o.ok) return g.reject(storageError(o.err));
      for (const e of o.events) this.events.publish(e);
      g.resolve(o.value);
    });
  }

  row(jobId: string): JobRow | undefined {
    return this.sql("SELECT * FROM jobs WHERE id = ?").get(jobId) as JobRow | undefined;
  }

  mustRow(jobId: string): JobRow {
    const r = this.row(jobId);
    if (r === undefined) throw new Error(`job ${jobId} vanished inside a transaction`);
    return r;
  }

  /** Moves a job to a terminal state, clearing its lease. */
  finish(r: JobRow, status: TerminalStatus, now: number, emit: Emit, extra: { error?: { code: string; message: string }; result?: StoredResult } = {}): void {
    this.sql(
      `UPDATE jobs SET status = ?, lease_token = NULL, lease_expires_at = NULL, completed_at = ?,
         progress = CASE WHEN ? = 'completed' THEN 100 ELSE progress END,
         result = COALESCE(?, result), error_code = ?, error_message = ?
       WHERE id = ?`,
    ).run(status, now, status, extra.result === undefined ? null : JSON.stringify(extra.result), extra.error?.code ?? null, extra.error?.message ?? null, r.id);
    this.tally(r.miner_id, minerTally({ status }, { now, ...(extra.error === undefined ? {} : { error: extra.error }), ...(extra.result === undefined ? {} : { tokensPerSecond: extra.result.tokensPerSecond }) }));
    emit({ jobId: r.id, type: status, at: now, data: { attempt: r.attempt, miner_id: r.miner_id, ...(extra.error === undefined ? {} : { error: extra.error }) } });
  }

  requeue(r: JobRow, now: number, notBefore: number, reason: string, countsAsFailure: boolean, emit: Emit, message = reason): void {
    this.sql(
      `UPDATE jobs SET status = 'queued', lease_token = NULL, lease_expires_at = NULL, miner_id = NULL,
         progress = 0, attempt_started_at = NULL, not_before = ?, failures = failures + ?
       WHERE id = ?`,
    ).run(notBefore, countsAsFailure ? 1 : 0, r.id);
    this.tally(r.miner_id, minerTally({ status: "requeued", countsAsFailure }, { now, error: { code: reason, message } }));
    emit({ jobId: r.id, type: "requeued", at: now, data: { attempt: r.attempt, miner_id: r.miner_id, reason } });
  }

  /** Adds an attempt's end to its miner's figures (a miner with no row is left alone). */
  private tally(minerId: string | null, t: MinerTally | null): void {
    if (minerId === null || t === null) return;
    this.sql(
      `UPDATE miners SET jobs_done = jobs_done + ?, jobs_failed = jobs_failed + ?,
         tokens_per_s = COALESCE(?, tokens_per_s), last_error = COALESCE(?, last_error) WHERE id = ?`,
    ).run(t.done, t.failed, t.tokensPerSecond, t.lastError === null ? null : JSON.stringify(t.lastError), minerId);
  }

  /** Writes what transitions.ts decided for a lease that ends (fail or expiry). */
  apply(r: JobRow, d: FailDecision, now: number, emit: Emit): "requeued" | "failed" | "cancelled" | "timed_out" {
    switch (d.kind) {
      case "cancelled":
        this.finish(r, "cancelled", now, emit, { error: CANCELLED_BY_CLIENT });
        return "cancelled";
      case "timed_out":
        this.finish(r, "timed_out", now, emit, { error: timedOut(r.timeout_seconds) });
        return "timed_out";
      case "requeue":
        this.requeue(r, now, d.notBefore, d.reason, true, emit, d.message);
        return "requeued";
      case "failed":
        this.finish(r, "failed", now, emit, { error: d.error });
        return "failed";
    }
  }

  /** Adjusts the tenant's stored bytes (inside a transaction). */
  addUsage(tenant: string, fileBytes: number, resultBytes: number): void {
    this.sql(
      `INSERT INTO tenant_usage (tenant, file_bytes, result_bytes) VALUES (@tenant, MAX(0, @f), MAX(0, @r))
       ON CONFLICT (tenant) DO UPDATE SET file_bytes = MAX(0, file_bytes + @f), result_bytes = MAX(0, result_bytes + @r)`,
    ).run({ tenant, f: fileBytes, r: resultBytes });
  }

  /** Records that a completed job's output is gone (inside a transaction); null when there is none. */
  markRemoved(r: JobRow, reason: "deleted" | "expired", now: number): { location: string } | null {
    const result = r.status === "completed" ? storedResult(r) : null;
    if (result === null || result.removed !== undefined) return null;
    this.sql("UPDATE jobs SET result = ? WHERE id = ?").run(JSON.stringify({ ...result, removed: { reason, at: now } }), r.id);
    this.addUsage(r.tenant, 0, -result.bytes);
    return { location: result.location };
  }

  close(): void {
    if (this.closed) return;
    // Grouped transactions already asked for commit first (their callers are waiting on them).
    this.flushGroup();
    this.closed = true;
    this.readCache.clear();
    this.db.close();
  }
}

/** Entries of the read cache (rows and counts: a few MB at most); when full it starts again empty. */
const READ_CACHE_ENTRIES = 10_000;

const UNAVAILABLE_CODES = ["SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_FULL", "SQLITE_IOERR", "SQLITE_READONLY", "SQLITE_CANTOPEN"];

/** SQLITE_BUSY / disk-full / read-only errors are UnavailableError (HTTP 503 + Retry-After). */
function storageError(err: unknown): unknown {
  const code = (err as { code?: unknown }).code;
  if (typeof code === "string" && UNAVAILABLE_CODES.some((c) => code.startsWith(c))) {
    return new UnavailableError("the job store is temporarily unavailable", { retryAfterSeconds: 1, cause: err });
  }
  return err;
}
