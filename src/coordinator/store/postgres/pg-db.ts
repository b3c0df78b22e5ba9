import pg from "pg";
import { UnavailableError } from "../../../common/errors.js";
import type { JobEvents } from "../job-events.js";
import type { KeyRow } from "../job-row.js";
import type { JobEvent } from "../job-store.js";

/** A statement runner: the pool (a read) or the client of a transaction. */
export type Queryable = Pick<pg.PoolClient, "query">;

/**
 * Appends an event to the job's log inside the current transaction (published after commit);
 * `many` appends one event to each of several jobs in one statement.
 */
export type PgEmit = ((e: Omit<JobEvent, "seq">) => Promise<void>) & {
  many: (events: Omit<JobEvent, "seq">[]) => Promise<void>;
  /** Events the verb's own statement logged and notified (a CTE ending in loggedEvent): published after the commit, like the others. */
  logged: (events: JobEvent[]) => void;
};

/** The channel job-state notifications go out on: `{"j": job id, "s": seq, "t": type, "o": replica}`, nothing more. */
export const JOB_CHANNEL = "aitbc_jobs";

export interface PgDbOptions {
  url: string;
  /** Schema the tables live in (search_path); tests give each store its own. Default "public". */
  schema?: string;
  /** Pool size. Default 10. */
  max?: number;
  /** Application name shown in pg_stat_activity. */
  applicationName?: string;
  /** This replica's name, sent with each notification so a replica can tell its own from others'. */
  replica?: string;
  /**
   * How long an API key's row, once read, answers authentication without another read (ms;
   * default 0, always read). A coordinator replica keeps them for `[limits] revocation_check`, the
   * time a revocation has to reach open connections too; a revocation's NOTIFY drops the row at
   * once on every replica (PgSignals), the expiry covers a lost one.
   */
  keyCacheMs?: number;
}

/** Most key rows kept (KEY_CACHE_MAX distinct keys within one keyCacheMs is a flood: start over). */
const KEY_CACHE_MAX = 10_000;

/** Statement names by SQL text, shared by every connection (each prepares a name once, on first use). */
const statementNames = new Map<string, string>();

/**
 * At most this many texts get a name: the verbs' texts are a few dozen (some with a LIMIT or a
 * column list written in), and a caller that wrote values into its SQL must not grow every
 * connection's prepared statements without end; texts past it run unnamed.
 */
const MAX_NAMED_STATEMENTS = 500;

function statementName(text: string): string | undefined {
  let name = statementNames.get(text);
  if (name === undefined && statementNames.size < MAX_NAMED_STATEMENTS) {
    name = `aitbc_${statementNames.size + 1}`;
    statementNames.set(text, name);
  }
  return name;
}

/**
 * Makes a pooled connection run every parameterized statement as a named prepared statement:
 * PostgreSQL then parses it once per connection instead of at every execution, and after a few
 * runs may keep a generic plan. A job's statements are the same dozen texts over and over (CTEs
 * that write the row, its event and the NOTIFY); in `npm run bench:cluster` A/B runs the
 * database's CPU per job was 12–54% lower with them named. Statements without parameters (BEGIN,
 * COMMIT, DDL, a `BEGIN; …` batch) run as before: the simple protocol takes several commands in
 * one string, a prepared statement only one.
 */
function namePreparedStatements(client: pg.PoolClient): void {
  const query = client.query.bind(client) as (...args: unknown[]) => unknown;
  // (text, values) from a verb's own client, (text, values, callback) from pool.query.
  const named = (...args: unknown[]): unknown => {
    const [text, values, ...callback] = args;
    const name = typeof text === "string" && Array.isArray(values) && callback.length <= 1 ? statementName(text) : undefined;
    return name === undefined ? query(...args) : query({ name, text, values }, ...callback);
  };
  (client as unknown as { query: typeof named }).query = named;
}

/** A job-state notification, `{"j","s","t","o"}` (the parameters given as SQL: columns or `$n`). */
function notifyJob(job: string, seq: string, type: string, channel: string, replica: string): string {
  return `pg_notify(${channel}, json_build_object('j', ${job}, 's', ${seq}, 't', ${type}, 'o', ${replica}::text)::text)`;
}

/**
 * Events in one round trip, one each for several jobs (distinct ids: a job's counter is bumped
 * once per statement), or one: each job's counter (its row is locked by the verb), the log row,
 * and the NOTIFY (`{"j","s","t","o"}`, delivered at commit). Three statements an event cost three
 * round trips, and a job's life has several events: with a fleet under load the replicas spent
 * more time writing to PostgreSQL's socket than anything else (`npm run bench:fleet` profiles).
 * The jobs are joined through their primary key, also in the generic plan of a prepared one.
 */
const EMIT_EVENTS = `WITH ev AS (SELECT * FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::int8[]) AS e(job_id, type, data, at)),
  bumped AS (UPDATE jobs j SET event_seq = j.event_seq + 1 FROM ev WHERE j.id = ev.job_id RETURNING j.id, j.event_seq),
  logged AS (INSERT INTO job_events (job_id, seq, type, data, at) SELECT ev.job_id, b.event_seq, ev.type, ev.data, ev.at FROM ev JOIN bumped b ON b.id = ev.job_id
    RETURNING job_id, seq, type)
SELECT job_id, seq, ${notifyJob("job_id", "seq", "type", "$5", "$6")} FROM logged`;

/** What loggedEvent and loggedEventCtes write the event from (SQL: `data` and `at` over upd's columns or `$n`; `channel`, `replica` the parameters PgDb.eventParams gives). */
interface LoggedEventSql {
  type: JobEventType;
  data: string;
  at: string;
  channel: string;
  replica: string;
}

/**
 * The CTEs that end a one-statement write whose first CTE, `upd`, wrote job rows with their new
 * `event_seq` and returned at least `id` and `event_seq`: `logged`, each row's event in the log
 * (of `type`, its data the SQL `data`, at the SQL `at`), and `written`, upd's rows with their
 * NOTIFY sent, as EMIT_EVENTS writes them. For a statement that selects from `written` itself.
 */
export function loggedEventCtes(e: LoggedEventSql): string {
  return `logged AS (INSERT INTO job_events (job_id, seq, type, data, at) SELECT id, event_seq, '${e.type}', ${e.data}, ${e.at}::bigint FROM upd RETURNING job_id),
written AS (SELECT upd.*, ${notifyJob("upd.id", "upd.event_seq", `'${e.type}'`, e.channel, e.replica)} AS notified FROM upd JOIN logged ON logged.job_id = upd.id)`;
}

/** loggedEventCtes and their rows: the end of a writeWithEvent statement. Returns upd's rows. */
export function loggedEvent(e: LoggedEventSql): string {
  return `${loggedEventCtes(e)}
SELECT * FROM written`;
}

/** The events written in one statement with the job's row (writeWithEvent, and a claim's assignments). */
export type JobEventType = "queued" | "assigned" | "running" | "completed";

/** int8 and numeric as numbers, not strings: times are epoch ms in bigint columns. */
const toNumber = (v: string): number => Number(v);
const types = {
  getTypeParser: ((oid: number, format?: "text" | "binary") =>
    oid === 20 || oid === 1700 ? toNumber : (pg.types.getTypeParser as (o: number, f?: "text" | "binary") => unknown)(oid, format)) as typeof pg.types.getTypeParser,
};

/**
 * The PostgreSQL connection pool and what every verb module shares: the transaction helper that
 * numbers each job's events (a counter on the job's row, which the verb has locked, so numbers
 * are 1..n without gaps or collisions across writers) and sends a small NOTIFY for each inside
 * the transaction (delivered only at commit), then publishes the events in this process after
 * the commit. Errors of an unreachable or failing database are UnavailableError (503).
 */
export class PgDb {
  readonly pool: pg.Pool;
  readonly schema: string;
  private closed = false;
  /** Why the database cannot be used yet (not reached, or not migrated); undefined once it can. */
  notReady: string | undefined;
  /** API key rows by id, each until its expiry (PgDbOptions.keyCacheMs). */
  private readonly keyRows = new Map<string, { row: KeyRow; until: number }>();

  constructor(
    readonly options: PgDbOptions,
    readonly events: JobEvents,
  ) {
    this.schema = options.schema ?? "public";
    if (!/^[a-z_][a-z0-9_]*$/.test(this.schema)) throw new Error(`invalid schema name ${this.schema}`);
    this.pool = new pg.Pool({
      connectionString: options.url,
      max: options.max ?? 10,
      types,
      // An unreachable database fails a request fast (503) instead of hanging it.
      connectionTimeoutMillis: 3_000,
      idleTimeoutMillis: 30_000,
      statement_timeout: 15_000,
      // Client side too: a database behind a dead link never answers, and a request must not hang.
      query_timeout: 20_000,
      application_name: options.applicationName ?? "aitbc-coordinator",
      options: `-c search_path=${this.schema}`,
    });
    // An idle client's error (the server went away) must not crash the process.
    this.pool.on("error", () => undefined);
    this.pool.on("connect", namePreparedStatements);
  }

  private usable(): void {
    if (this.closed) throw new UnavailableError("the job store is closed");
    if (this.notReady !== undefined) throw new UnavailableError(`the database is not ready: ${this.notReady}`);
  }

  async query<R extends pg.QueryResultRow>(text: string, params: unknown[] = []): Promise<R[]> {
    this.usable();
    try {
      return (await this.pool.query<R>(text, params)).rows;
    } catch (err) {
      throw storageError(err);
    }
  }

  /**
   * Runs fn in a READ COMMITTED transaction. Verbs lock what they change (FOR UPDATE, or one
   * conditional UPDATE), so the rules in transitions.ts see the row as it is. With `beginsItself`
   * fn's first statement must start with `BEGIN;` (asyncCommit is then not applied).
   */
  async tx<T>(fn: (c: pg.PoolClient, emit: PgEmit) => Promise<T>, options: { asyncCommit?: boolean; beginsItself?: boolean } = {}): Promise<T> {
    this.usable();
    let client: pg.PoolClient;
    try {
      client = await this.pool.connect();
    } catch (err) {
      throw storageError(err);
    }
    // A checked-out client between two queries has no listener of the pool's: a connection reset
    // then would be an uncaught 'error' (the next query fails and rolls back instead).
    const onError = (): void => undefined;
    client.on("error", onError);
    const pending: JobEvent[] = [];
    const many = async (events: Omit<JobEvent, "seq">[]): Promise<void> => {
      if (events.length === 0) return;
      if (new Set(events.map((e) => e.jobId)).size !== events.length) throw new Error("emit.many takes one event per job");
      const r = await client.query<{ job_id: string; seq: number }>(EMIT_EVENTS, [
        events.map((e) => e.jobId),
        events.map((e) => e.type),
        events.map((e) => JSON.stringify(e.data)),
        events.map((e) => e.at),
        ...this.eventParams(),
      ]);
      const seqs = new Map(r.rows.map((row) => [row.job_id, row.seq]));
      for (const e of events) {
        const seq = seqs.get(e.jobId);
        if (seq === undefined) throw new Error(`job ${e.jobId} vanished while its event was written`);
        pending.push({ ...e, seq });
      }
    };
    const logged = (events: JobEvent[]): void => void pending.push(...events);
    const emit: PgEmit = Object.assign((e: Omit<JobEvent, "seq">) => many([e]), { many, logged });
    let out: T;
    try {
      // A verb that begins itself sends BEGIN in one simple query with its first statement (one
      // round trip less: see claimNextJob).
      if (options.beginsItself !== true) await client.query("BEGIN");
      // A lease renewal may be lost in a crash (the next one renews again); nothing else may.
      if (options.asyncCommit === true) await client.query("SET LOCAL synchronous_commit = off");
      out = await fn(client, emit);
      await client.query("COMMIT");
    } catch (err) {
      await client.query("ROLLBACK").catch(() => undefined);
      client.off("error", onError);
      client.release(isConnectionError(err));
      throw storageError(err);
    }
    client.off("error", onError);
    client.release();
    for (const e of pending) this.events.publish(e);
    return out;
  }

  /**
   * One autocommit statement (durable at its commit, synchronous_commit on) that writes a job and
   * logs its event itself (a CTE ending in loggedEvent): a transaction's BEGIN, its separate event
   * statement and its COMMIT were three round trips more, on the verbs every job passes through.
   * `params` get JOB_CHANNEL and this replica's name appended (the statement's last two
   * parameters); the event (`data` from the row written, and JobEvent.destination when
   * `destination` says it) is published here after the commit. Undefined when nothing was written.
   */
  async writeWithEvent<R extends { id: string; event_seq: number }>(
    text: string,
    params: unknown[],
    event: { type: JobEventType; at: number; data: (row: R) => Record<string, unknown>; destination?: (row: R) => string },
  ): Promise<R | undefined> {
    const rows = await this.writeWithEvents<R>(text, params, (written) =>
      written.slice(0, 1).map((row) => ({
        jobId: row.id,
        seq: row.event_seq,
        type: event.type,
        at: event.at,
        data: event.data(row),
        ...(event.destination === undefined ? {} : { destination: event.destination(row) }),
      })),
    );
    return rows[0];
  }

  /** The two parameters an event-writing statement ends with: the NOTIFY channel and this replica's name. */
  eventParams(): [string, string] {
    return [JOB_CHANNEL, this.options.replica ?? ""];
  }

  /**
   * writeWithEvent for a statement that may write several jobs, each with its event (its CTEs
   * end in loggedEvent too): the rows it returns, and the events `events` makes of them
   * published here after the commit.
   */
  async writeWithEvents<R extends pg.QueryResultRow>(text: string, params: unknown[], events: (rows: R[]) => JobEvent[]): Promise<R[]> {
    const rows = await this.query<R>(text, [...params, ...this.eventParams()]);
    for (const e of events(rows)) this.events.publish(e);
    return rows;
  }

  /** The key's row, read at most keyCacheMs ago, or undefined (read it). */
  cachedKey(id: string): KeyRow | undefined {
    const hit = this.keyRows.get(id);
    if (hit === undefined) return undefined;
    if (hit.until > performance.now()) return hit.row;
    this.keyRows.delete(id);
    return undefined;
  }

  rememberKey(row: KeyRow): void {
    const ms = this.options.keyCacheMs ?? 0;
    if (ms <= 0) return;
    if (this.keyRows.size >= KEY_CACHE_MAX) this.keyRows.clear();
    this.keyRows.set(row.id, { row, until: performance.now() + ms });
  }

  /** A key was revoked (here, or by another replica's NOTIFY): its row is read again. */
  forgetKey(id: string): void {
    this.keyRows.delete(id);
  }

  get isClosed(): boolean {
    return this.closed;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.pool.end();
  }
}

/** SQLSTATE classes and Node errors that mean "the database is not there right now". */
export function isConnectionError(err: unknown): boolean {
  const e = err as { code?: unknown; message?: unknown };
  const code = typeof e.code === "string" ? e.code : "";
  if (["ECONNREFUSED", "ECONNRESET", "ENOTFOUND", "ETIMEDOUT", "EPIPE", "EHOSTUNREACH"].includes(code)) return true;
  // 08: connection exception; 28: bad credentials; 3D000: no such database; 53: insufficient
  // resources; 57P: operator intervention (shutdown); 58: system error.
  if (/^(08|28|3D000|53|57P|58)/.test(code)) return true;
  const message = typeof e.message === "string" ? e.message : "";
  return /Connection terminated|timeout exceeded when trying to connect|Client has encountered a connection error|connection is closed/i.test(message);
}

export function storageError(err: unknown): unknown {
  if (err instanceof UnavailableError) return err;
  // 40001 serialization failure, 40P01 deadlock, 55P03 lock not available: retryable too.
  const code = (err as { code?: unknown }).code;
  if (isConnectionError(err) || code === "40001" || code === "40P01" || code === "55P03") {
    return new UnavailableError("the job store is temporarily unavailable", { retryAfterSeconds: 1, cause: err });
  }
  return err;
}
