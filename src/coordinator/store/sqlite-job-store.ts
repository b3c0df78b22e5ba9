import { mkdirSync } from "node:fs";
import path from "node:path";
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import Database from "better-sqlite3";
import { UnavailableError } from "../../common/errors.js";
import type { JobState, Priority } from "../../protocol/version.js";
import { minerCanRun } from "../scheduler/matching.js";
import { MIGRATIONS } from "./migrations.js";
import type {
  ApiKeyRecord,
  Assignment,
  CancelOutcome,
  CommitOutcome,
  FailOutcome,
  FileRecord,
  JobEvent,
  JobRecord,
  JobStore,
  LeaseRef,
  MinerCapabilities,
  NewJob,
  Page,
  ReapedJob,
  TenantUsage,
  StoredResult,
  UploadRecord,
} from "./job-store.js";
import { JobEvents } from "./job-events.js";
import { decideExpiry, decideFail, type FailDecision } from "./transitions.js";

const PRIORITY_RANK: Record<Priority, number> = { low: 0, normal: 1, high: 2 };
const CLAIM_BATCH = 200;

interface JobRow {
  id: string;
  tenant: string;
  seq: number;
  model: string;
  input: string;
  input_file_id: string | null;
  output_format: string;
  destination: string;
  requirements: string;
  priority: string;
  priority_rank: number;
  timeout_seconds: number;
  parameters: string;
  status: string;
  progress: number;
  miner_id: string | null;
  attempt: number;
  failures: number;
  max_attempts: number;
  lease_token: string | null;
  lease_expires_at: number | null;
  cancel_requested: number;
  created_at: number;
  assigned_at: number | null;
  started_at: number | null;
  attempt_started_at: number | null;
  completed_at: number | null;
  not_before: number;
  result: string | null;
  error_code: string | null;
  error_message: string | null;
  estimated_cost: number;
  estimated_time_seconds: number;
  idempotency_key: string | null;
  request_hash: string | null;
}

interface KeyRow {
  id: string;
  kind: string;
  name: string;
  tenant: string;
  secret_hash: Buffer;
  created_at: number;
  revoked_at: number | null;
}

function toJob(r: JobRow): JobRecord {
  return {
    id: r.id,
    tenant: r.tenant,
    model: r.model,
    input: r.input,
    inputFileId: r.input_file_id,
    outputFormat: r.output_format as JobRecord["outputFormat"],
    destination: r.destination,
    requirements: JSON.parse(r.requirements) as JobRecord["requirements"],
    priority: r.priority as Priority,
    timeoutSeconds: r.timeout_seconds,
    parameters: JSON.parse(r.parameters) as JobRecord["parameters"],
    status: r.status as JobState,
    progress: r.progress,
    minerId: r.miner_id,
    attempt: r.attempt,
    failures: r.failures,
    maxAttempts: r.max_attempts,
    leaseToken: r.lease_token,
    leaseExpiresAt: r.lease_expires_at,
    cancelRequested: r.cancel_requested === 1,
    createdAt: r.created_at,
    assignedAt: r.assigned_at,
    startedAt: r.started_at,
    attemptStartedAt: r.attempt_started_at,
    completedAt: r.completed_at,
    notBefore: r.not_before,
    result: r.result === null ? null : (JSON.parse(r.result) as StoredResult),
    error: r.error_code === null ? null : { code: r.error_code, message: r.error_message ?? "" },
    estimatedCost: r.estimated_cost,
    estimatedTimeSeconds: r.estimated_time_seconds,
  };
}

function toKey(r: KeyRow): ApiKeyRecord {
  return {
    id: r.id,
    kind: r.kind as ApiKeyRecord["kind"],
    name: r.name,
    tenant: r.tenant,
    createdAt: r.created_at,
    revokedAt: r.revoked_at,
  };
}

const ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789";
/** A random id of lower-case letters and digits (≈ 5.2 bits each). */
export function randomId(prefix: string, length = 16): string {
  const bytes = randomBytes(length);
  let out = "";
  for (const b of bytes) out += ALPHABET[b % ALPHABET.length];
  return `${prefix}${out}`;
}

function sha256(text: string): Buffer {
  return createHash("sha256").update(text).digest();
}

/**
 * Cursors are opaque to clients: base64url of the last row's (sort key, insertion seq). The seq
 * breaks ties between jobs of the same millisecond in submission order (a random id would not).
 */
function encodeCursor(sortKey: number, seq: number): string {
  return Buffer.from(JSON.stringify([sortKey, seq])).toString("base64url");
}

function decodeCursor(cursor: string | undefined): [number, number] | undefined {
  if (cursor === undefined) return undefined;
  try {
    const v = JSON.parse(Buffer.from(cursor, "base64url").toString("utf8")) as unknown;
    if (Array.isArray(v) && v.length === 2 && Number.isInteger(v[0]) && Number.isInteger(v[1])) {
      return [v[0] as number, v[1] as number];
    }
  } catch {
    // fall through
  }
  throw new InvalidCursorError();
}

export class InvalidCursorError extends Error {
  constructor() {
    super("cursor is not one this server issued");
  }
}

/**
 * SQLite (better-sqlite3) implementation: WAL journal with `synchronous=FULL`, so a job is on
 * disk before POST /v1/jobs answers. better-sqlite3 is synchronous, and every verb runs in one
 * transaction on the one connection, so verbs are atomic with respect to each other.
 * SQLITE_BUSY / disk-full / read-only errors surface as UnavailableError (HTTP 503 + Retry-After).
 */
export class SqliteJobStore implements JobStore {
  private readonly db: Database.Database;
  private closed = false;

  constructor(
    file: string,
    readonly events: JobEvents = new JobEvents(),
  ) {
    if (file !== ":memory:") mkdirSync(path.dirname(file), { recursive: true });
    // A short busy timeout: better-sqlite3 waits synchronously, so a lock held by another
    // process (a backup, `aitbc keys`) would stall the event loop for this long; past it the
    // request gets 503 + Retry-After instead.
    this.db = new Database(file, { timeout: 250 });
    this.db.pragma("journal_mode = WAL");
    this.db.pragma("synchronous = FULL");
    this.db.pragma("foreign_keys = ON");
    this.migrate();
  }

  /** Prepared statements, compiled once per SQL text (preparing dominated cheap reads). */
  private readonly statements = new Map<string, Database.Statement>();

  private sql(text: string): Database.Statement {
    let stmt = this.statements.get(text);
    if (stmt === undefined) {
      stmt = this.db.prepare(text);
      this.statements.set(text, stmt);
    }
    return stmt;
  }

  private migrate(): void {
    this.db.exec("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)");
    const applied = new Set(
      (this.sql("SELECT version FROM schema_migrations").all() as { version: number }[]).map((r) => r.version),
    );
    for (const [i, sql] of MIGRATIONS.entries()) {
      const version = i + 1;
      if (applied.has(version)) continue;
      this.db.transaction(() => {
        this.db.exec(sql);
        this.sql("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)").run(version, Date.now());
      })();
    }
  }

  /** Runs fn in a transaction; storage faults become 503s, and events are published after commit. */
  private tx<T>(fn: (emit: (e: Omit<JobEvent, "seq">) => void) => T): T {
    if (this.closed) throw new UnavailableError("the job store is closed");
    const pending: JobEvent[] = [];
    const emit = (e: Omit<JobEvent, "seq">): void => {
      const row = this.sql("SELECT COALESCE(MAX(seq), 0) + 1 AS seq FROM job_events WHERE job_id = ?")
        .get(e.jobId) as { seq: number };
      this.sql("INSERT INTO job_events (job_id, seq, type, data, at) VALUES (?, ?, ?, ?, ?)")
        .run(e.jobId, row.seq, e.type, JSON.stringify(e.data), e.at);
      pending.push({ ...e, seq: row.seq });
    };
    let out: T;
    try {
      out = this.db.transaction(() => fn(emit)).immediate();
    } catch (err) {
      throw storageError(err);
    }
    for (const e of pending) this.events.publish(e);
    return out;
  }

  private row(jobId: string): JobRow | undefined {
    return this.sql("SELECT * FROM jobs WHERE id = ?").get(jobId) as JobRow | undefined;
  }

  private mustRow(jobId: string): JobRow {
    const r = this.row(jobId);
    if (r === undefined) throw new Error(`job ${jobId} vanished inside a transaction`);
    return r;
  }

  private holds(r: JobRow | undefined, ref: LeaseRef): r is JobRow {
    return (
      r !== undefined &&
      (r.status === "assigned" || r.status === "running") &&
      r.attempt === ref.attempt &&
      r.lease_token !== null &&
      safeEqual(r.lease_token, ref.leaseToken) &&
      (ref.minerId === undefined || r.miner_id === ref.minerId)
    );
  }

  /** Moves a job to a terminal state, clearing its lease. */
  private finish(
    r: JobRow,
    status: "completed" | "failed" | "cancelled" | "timed_out" | "expired",
    now: number,
    emit: (e: Omit<JobEvent, "seq">) => void,
    extra: { error?: { code: string; message: string }; result?: StoredResult } = {},
  ): void {
    this.sql(
        `UPDATE jobs SET status = ?, lease_token = NULL, lease_expires_at = NULL, completed_at = ?,
           progress = CASE WHEN ? = 'completed' THEN 100 ELSE progress END,
           result = COALESCE(?, result), error_code = ?, error_message = ?
         WHERE id = ?`,
      )
      .run(
        status,
        now,
        status,
        extra.result === undefined ? null : JSON.stringify(extra.result),
        extra.error?.code ?? null,
        extra.error?.message ?? null,
        r.id,
      );
    emit({
      jobId: r.id,
      type: status,
      at: now,
      data: { attempt: r.attempt, miner_id: r.miner_id, ...(extra.error === undefined ? {} : { error: extra.error }) },
    });
  }

  private requeue(r: JobRow, now: number, notBefore: number, reason: string, countsAsFailure: boolean, emit: (e: Omit<JobEvent, "seq">) => void): void {
    this.sql(
        `UPDATE jobs SET status = 'queued', lease_token = NULL, lease_expires_at = NULL, miner_id = NULL,
           progress = 0, attempt_started_at = NULL, not_before = ?, failures = failures + ?
         WHERE id = ?`,
      )
      .run(notBefore, countsAsFailure ? 1 : 0, r.id);
    emit({ jobId: r.id, type: "requeued", at: now, data: { attempt: r.attempt, miner_id: r.miner_id, reason } });
  }

  // ------------------------------------------------------------------ client side

  createJob(job: NewJob, now: number): Promise<{ job: JobRecord; created: boolean }> {
    return settle(() =>
      this.tx((emit) => {
        if (job.idempotency !== undefined) {
          const existing = this.sql("SELECT * FROM jobs WHERE tenant = ? AND idempotency_key = ?")
            .get(job.tenant, job.idempotency.key) as JobRow | undefined;
          if (existing !== undefined) {
            if (existing.request_hash !== job.idempotency.requestHash) throw new IdempotencyMismatchError(existing.id);
            return { job: toJob(existing), created: false };
          }
        }
        const id = randomId("job_");
        this.sql(
            `INSERT INTO jobs (id, tenant, model, input, input_file_id, output_format, destination, requirements,
               priority, priority_rank, timeout_seconds, parameters, status, progress, attempt, failures, max_attempts,
               cancel_requested, created_at, not_before, estimated_cost, estimated_time_seconds, idempotency_key, request_hash)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'queued', 0, 0, 0, ?, 0, ?, 0, ?, ?, ?, ?)`,
          )
          .run(
            id,
            job.tenant,
            job.model,
            job.input,
            job.inputFileId,
            job.outputFormat,
            job.destination,
            JSON.stringify(job.requirements),
            job.priority,
            PRIORITY_RANK[job.priority],
            job.timeoutSeconds,
            JSON.stringify(job.parameters),
            job.maxAttempts,
            now,
            job.estimatedCost,
            job.estimatedTimeSeconds,
            job.idempotency?.key ?? null,
            job.idempotency?.requestHash ?? null,
          );
        emit({ jobId: id, type: "queued", at: now, data: { model: job.model, priority: job.priority } });
        return { job: toJob(this.mustRow(id)), created: true };
      }),
    );
  }

  getJob(tenant: string, jobId: string): Promise<JobRecord | null> {
    const r = this.row(jobId);
    return Promise.resolve(r === undefined || r.tenant !== tenant ? null : toJob(r));
  }

  getJobById(jobId: string): Promise<JobRecord | null> {
    const r = this.row(jobId);
    return Promise.resolve(r === undefined ? null : toJob(r));
  }

  listJobs(tenant: string, q: { status?: JobState; limit: number; cursor?: string }): Promise<Page<JobRecord>> {
    return settle(() => this.listJobsNow(tenant, q));
  }

  private listJobsNow(tenant: string, q: { status?: JobState; limit: number; cursor?: string }): Page<JobRecord> {
    const cursor = decodeCursor(q.cursor);
    const where = ["tenant = @tenant"];
    if (q.status !== undefined) where.push("status = @status");
    const params = { tenant, status: q.status ?? null, limit: q.limit + 1, ck: cursor?.[0] ?? 0, cseq: cursor?.[1] ?? 0 };
    const total = (this.sql(`SELECT COUNT(*) AS n FROM jobs WHERE ${where.join(" AND ")}`).get(params) as { n: number }).n;
    if (cursor !== undefined) where.push("(created_at < @ck OR (created_at = @ck AND seq < @cseq))");
    const rows = this.sql(`SELECT * FROM jobs WHERE ${where.join(" AND ")} ORDER BY created_at DESC, seq DESC LIMIT @limit`)
      .all(params) as JobRow[];
    return this.page(rows, q.limit, total, (r) => r.created_at);
  }

  listHistory(tenant: string, q: { from: number; to: number; limit: number; cursor?: string }): Promise<Page<JobRecord>> {
    return settle(() => this.listHistoryNow(tenant, q));
  }

  private listHistoryNow(tenant: string, q: { from: number; to: number; limit: number; cursor?: string }): Page<JobRecord> {
    const cursor = decodeCursor(q.cursor);
    const where = [
      "tenant = @tenant",
      "completed_at IS NOT NULL",
      "status IN ('completed','failed','cancelled','timed_out','expired')",
      "completed_at >= @from AND completed_at <= @to",
    ];
    const params = { tenant, from: q.from, to: q.to, limit: q.limit + 1, ck: cursor?.[0] ?? 0, cseq: cursor?.[1] ?? 0 };
    const total = (this.sql(`SELECT COUNT(*) AS n FROM jobs WHERE ${where.join(" AND ")}`).get(params) as { n: number }).n;
    if (cursor !== undefined) where.push("(completed_at < @ck OR (completed_at = @ck AND seq < @cseq))");
    const rows = this.sql(`SELECT * FROM jobs WHERE ${where.join(" AND ")} ORDER BY completed_at DESC, seq DESC LIMIT @limit`)
      .all(params) as JobRow[];
    return this.page(rows, q.limit, total, (r) => r.completed_at ?? 0);
  }

  private page(rows: JobRow[], limit: number, total: number, key: (r: JobRow) => number): Page<JobRecord> {
    const more = rows.length > limit;
    const items = rows.slice(0, limit);
    const last = items[items.length - 1];
    return {
      items: items.map(toJob),
      total,
      nextCursor: more && last !== undefined ? encodeCursor(key(last), last.seq) : null,
    };
  }

  requestCancel(tenant: string, jobId: string, now: number): Promise<CancelOutcome | null> {
    return settle(() =>
      this.tx((emit): CancelOutcome | null => {
        const r = this.row(jobId);
        if (r === undefined || r.tenant !== tenant) return null;
        if (r.status === "queued") {
          this.finish(r, "cancelled", now, emit, { error: { code: "cancelled", message: "cancelled by the client" } });
          return { outcome: "cancelled", job: toJob(this.mustRow(jobId)) };
        }
        if (r.status === "assigned" || r.status === "running") {
          if (r.cancel_requested === 0) {
            this.sql("UPDATE jobs SET cancel_requested = 1 WHERE id = ?").run(jobId);
            emit({ jobId, type: "cancel_requested", at: now, data: { attempt: r.attempt, miner_id: r.miner_id } });
          }
          return { outcome: "cancel_requested", job: toJob(this.mustRow(jobId)) };
        }
        return { outcome: "conflict", job: toJob(r) };
      }),
    );
  }

  countQueued(filter: { tenant?: string; model?: string }): Promise<number> {
    const row = this.sql(
        "SELECT COUNT(*) AS n FROM jobs WHERE status = 'queued' AND (@tenant IS NULL OR tenant = @tenant) AND (@model IS NULL OR model = @model)",
      )
      .get({ tenant: filter.tenant ?? null, model: filter.model ?? null }) as { n: number };
    return Promise.resolve(row.n);
  }

  countByState(): Promise<Partial<Record<JobState, number>>> {
    const rows = this.sql("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status").all() as { status: JobState; n: number }[];
    return Promise.resolve(Object.fromEntries(rows.map((r) => [r.status, r.n])));
  }

  queuePosition(job: JobRecord): Promise<number> {
    const row = this.sql(
        // Jobs the scheduler would pick first: same model, higher priority, or same priority and
        // submitted earlier (seq). Counted on the jobs_queue_model index alone.
        `SELECT COUNT(*) AS n FROM jobs WHERE status = 'queued' AND model = ?
           AND (priority_rank > ? OR (priority_rank = ? AND seq < (SELECT seq FROM jobs WHERE id = ?)))`,
      )
      .get(job.model, PRIORITY_RANK[job.priority], PRIORITY_RANK[job.priority], job.id) as {
      n: number;
    };
    return Promise.resolve(row.n);
  }

  createFile(tenant: string, content: string, upload: { sha256: string; bytes: number }, now: number): Promise<FileRecord> {
    return settle(() =>
      this.tx(() => {
        const id = randomId("file_");
        this.sql("INSERT INTO files (id, tenant, bytes, sha256, created_at, content) VALUES (?, ?, ?, ?, ?, ?)")
          .run(id, tenant, upload.bytes, upload.sha256, now, content);
        this.addUsage(tenant, upload.bytes, 0);
        return { id, tenant, bytes: upload.bytes, sha256: upload.sha256, createdAt: now, content };
      }),
    );
  }

  deleteFile(tenant: string, fileId: string): Promise<boolean> {
    return settle(() =>
      this.tx(() => {
        const r = this.sql("DELETE FROM files WHERE id = ? AND tenant = ? RETURNING bytes").get(fileId, tenant) as { bytes: number } | undefined;
        if (r === undefined) return false;
        this.addUsage(tenant, -r.bytes, 0);
        return true;
      }),
    );
  }

  usage(tenant: string): Promise<TenantUsage> {
    const r = this.sql("SELECT file_bytes, result_bytes FROM tenant_usage WHERE tenant = ?").get(tenant) as
      | { file_bytes: number; result_bytes: number }
      | undefined;
    return Promise.resolve({ fileBytes: r?.file_bytes ?? 0, resultBytes: r?.result_bytes ?? 0 });
  }

  removeResult(tenant: string, jobId: string, reason: "deleted", now: number): Promise<{ location: string } | null> {
    return settle(() =>
      this.tx(() => {
        const r = this.row(jobId);
        if (r === undefined || r.tenant !== tenant) return null;
        return this.markRemoved(r, reason, now);
      }),
    );
  }

  expireResults(before: number, now: number, limit: number): Promise<{ jobId: string; location: string }[]> {
    return settle(() =>
      this.tx(() => {
        const rows = this.sql(
          `SELECT * FROM jobs WHERE status = 'completed' AND completed_at < ? AND result IS NOT NULL
             AND json_extract(result, '$.removed') IS NULL ORDER BY completed_at LIMIT ?`,
        ).all(before, limit) as JobRow[];
        const out: { jobId: string; location: string }[] = [];
        for (const r of rows) {
          const removed = this.markRemoved(r, "expired", now);
          if (removed !== null) out.push({ jobId: r.id, location: removed.location });
        }
        return out;
      }),
    );
  }

  expireFiles(before: number, limit: number): Promise<number> {
    return settle(() =>
      this.tx(() => {
        const rows = this.sql("DELETE FROM files WHERE id IN (SELECT id FROM files WHERE created_at < ? ORDER BY created_at LIMIT ?) RETURNING tenant, bytes")
          .all(before, limit) as { tenant: string; bytes: number }[];
        for (const r of rows) this.addUsage(r.tenant, -r.bytes, 0);
        return rows.length;
      }),
    );
  }

  /** Inside a transaction: records that a completed job's output is gone; null when there is none. */
  private markRemoved(r: JobRow, reason: "deleted" | "expired", now: number): { location: string } | null {
    if (r.status !== "completed" || r.result === null) return null;
    const result = JSON.parse(r.result) as StoredResult;
    if (result.removed !== undefined) return null;
    const next: StoredResult = { ...result, removed: { reason, at: now } };
    this.sql("UPDATE jobs SET result = ? WHERE id = ?").run(JSON.stringify(next), r.id);
    this.addUsage(r.tenant, 0, -result.bytes);
    return { location: result.location };
  }

  /** Inside a transaction: adjusts the tenant's stored bytes. */
  private addUsage(tenant: string, fileBytes: number, resultBytes: number): void {
    this.sql(
      `INSERT INTO tenant_usage (tenant, file_bytes, result_bytes) VALUES (@tenant, MAX(0, @f), MAX(0, @r))
       ON CONFLICT (tenant) DO UPDATE SET file_bytes = MAX(0, file_bytes + @f), result_bytes = MAX(0, result_bytes + @r)`,
    ).run({ tenant, f: fileBytes, r: resultBytes });
  }

  getFile(tenant: string, fileId: string): Promise<FileRecord | null> {
    const r = this.sql("SELECT * FROM files WHERE id = ? AND tenant = ?").get(fileId, tenant) as
      | { id: string; tenant: string; bytes: number; sha256: string; created_at: number; content: string }
      | undefined;
    return Promise.resolve(
      r === undefined
        ? null
        : { id: r.id, tenant: r.tenant, bytes: r.bytes, sha256: r.sha256, createdAt: r.created_at, content: r.content },
    );
  }

  listEvents(jobId: string, afterSeq: number): Promise<JobEvent[]> {
    const rows = this.sql("SELECT job_id, seq, type, data, at FROM job_events WHERE job_id = ? AND seq > ? ORDER BY seq")
      .all(jobId, afterSeq) as { job_id: string; seq: number; type: string; data: string; at: number }[];
    return Promise.resolve(
      rows.map((r) => ({ jobId: r.job_id, seq: r.seq, type: r.type, data: JSON.parse(r.data) as Record<string, unknown>, at: r.at })),
    );
  }

  // ------------------------------------------------------------------ miner side

  claimNextJob(miner: MinerCapabilities, now: number, leaseTtlMs: number): Promise<Assignment | null> {
    if (miner.models.length === 0) return Promise.resolve(null);
    return settle(() =>
      this.tx((emit) => {
        const marks = miner.models.map(() => "?").join(",");
        const select = this.sql(
          `SELECT * FROM jobs WHERE status = 'queued' AND not_before <= ? AND model IN (${marks})
             AND (priority_rank < ? OR (priority_rank = ? AND seq > ?))
           ORDER BY priority_rank DESC, seq ASC LIMIT ${CLAIM_BATCH}`,
        );
        let rank = 3;
        let seq = 0;
        for (;;) {
          const rows = select.all(now, ...miner.models, rank, rank, seq) as JobRow[];
          if (rows.length === 0) return null;
          for (const r of rows) {
            const job = toJob(r);
            if (!minerCanRun(job, miner)) continue;
            const attempt = r.attempt + 1;
            const leaseToken = randomBytes(18).toString("base64url");
            const leaseExpiresAt = now + leaseTtlMs;
            this.sql(
                `UPDATE jobs SET status = 'assigned', attempt = ?, lease_token = ?, lease_expires_at = ?, miner_id = ?,
                   assigned_at = ?, progress = 0 WHERE id = ? AND status = 'queued'`,
              )
              .run(attempt, leaseToken, leaseExpiresAt, miner.minerId, now, r.id);
            emit({ jobId: r.id, type: "assigned", at: now, data: { attempt, miner_id: miner.minerId } });
            return { job: toJob(this.mustRow(r.id)), attempt, leaseToken, leaseExpiresAt };
          }
          const last = rows[rows.length - 1]!;
          rank = last.priority_rank;
          seq = last.seq;
        }
      }),
    );
  }

  markRunning(ref: LeaseRef, now: number, leaseTtlMs: number): Promise<boolean> {
    return settle(() =>
      this.tx((emit) => {
        const r = this.row(ref.jobId);
        if (!this.holds(r, ref) || r.status !== "assigned") return false;
        this.sql(
            `UPDATE jobs SET status = 'running', started_at = COALESCE(started_at, ?), attempt_started_at = ?,
               lease_expires_at = ? WHERE id = ?`,
          )
          .run(now, now, now + leaseTtlMs, ref.jobId);
        emit({ jobId: ref.jobId, type: "running", at: now, data: { attempt: ref.attempt, miner_id: r.miner_id } });
        return true;
      }),
    );
  }

  renewLease(
    ref: LeaseRef,
    now: number,
    leaseTtlMs: number,
    progress?: number,
  ): Promise<{ renewed: boolean; cancelRequested: boolean }> {
    return settle(() =>
      this.tx(() => {
        const r = this.row(ref.jobId);
        if (!this.holds(r, ref)) return { renewed: false, cancelRequested: false };
        this.sql("UPDATE jobs SET lease_expires_at = MAX(COALESCE(lease_expires_at, 0), ?), progress = COALESCE(?, progress) WHERE id = ?")
          .run(now + leaseTtlMs, progress === undefined ? null : Math.max(0, Math.min(100, progress)), ref.jobId);
        return { renewed: true, cancelRequested: r.cancel_requested === 1 };
      }),
    );
  }

  commitResult(ref: LeaseRef, result: StoredResult, now: number): Promise<CommitOutcome> {
    return settle(() =>
      this.tx((emit): CommitOutcome => {
        const r = this.row(ref.jobId);
        if (r === undefined) return "stale";
        if (r.status === "completed") {
          const committed = r.result === null ? null : (JSON.parse(r.result) as StoredResult);
          return committed !== null && committed.attempt === ref.attempt && committed.sha256 === result.sha256
            ? "duplicate"
            : "stale";
        }
        if (!this.holds(r, ref)) return "stale";
        // The client was told its cancel was accepted (202): the cancel wins over a result that
        // arrives before the miner stopped, so a job never completes behind an accepted cancel.
        if (r.cancel_requested === 1) {
          this.finish(r, "cancelled", now, emit, { error: { code: "cancelled", message: "cancelled by the client" } });
          return "stale";
        }
        this.finish(r, "completed", now, emit, { result: { ...result, attempt: ref.attempt } });
        this.addUsage(r.tenant, 0, result.bytes);
        return "committed";
      }),
    );
  }

  recordUpload(
    jobId: string,
    outcome: { uri: string; attempts: number } | { error: { code: string; message: string }; attempts: number },
    now: number,
  ): Promise<boolean> {
    return settle(() =>
      this.tx((emit): boolean => {
        const r = this.row(jobId);
        if (r?.status !== "completed" || r.result === null) return false;
        const upload: UploadRecord =
          "uri" in outcome
            ? { state: "uploaded", uri: outcome.uri, attempts: outcome.attempts, at: now }
            : { state: "failed", error: outcome.error, attempts: outcome.attempts, at: now };
        const result: StoredResult = { ...(JSON.parse(r.result) as StoredResult), upload };
        this.db.prepare("UPDATE jobs SET result = ? WHERE id = ?").run(JSON.stringify(result), jobId);
        emit({
          jobId,
          type: upload.state === "uploaded" ? "uploaded" : "upload_failed",
          at: now,
          data: upload.state === "uploaded" ? { uri: upload.uri, attempts: upload.attempts } : { error: upload.error, attempts: upload.attempts },
        });
        return true;
      }),
    );
  }

  listPendingUploads(limit: number): Promise<JobRecord[]> {
    return settle(() =>
      (
        this.sql(
          `SELECT * FROM jobs WHERE status = 'completed' AND destination LIKE 's3://%' AND result IS NOT NULL
             AND COALESCE(json_extract(result, '$.upload.state'), '') <> 'uploaded' AND json_extract(result, '$.removed') IS NULL
           ORDER BY completed_at, id LIMIT ?`,
        ).all(limit) as JobRow[]
      ).map(toJob),
    );
  }

  failAttempt(
    ref: LeaseRef,
    failure: { code: string; message: string; retryable: boolean },
    now: number,
    requeueBackoffMs: number,
  ): Promise<FailOutcome> {
    return settle(() =>
      this.tx((emit): FailOutcome => {
        const r = this.row(ref.jobId);
        if (!this.holds(r, ref)) return "stale";
        const d = decideFail(
          { cancelRequested: r.cancel_requested === 1, failures: r.failures, maxAttempts: r.max_attempts, assignedAt: r.assigned_at, timeoutSeconds: r.timeout_seconds },
          failure,
          now,
          requeueBackoffMs,
        );
        return this.apply(r, d, now, emit);
      }),
    );
  }

  /** Writes what transitions.ts decided for a lease that ends (fail or expiry). */
  private apply(r: JobRow, d: FailDecision, now: number, emit: (e: Omit<JobEvent, "seq">) => void): "requeued" | "failed" | "cancelled" | "timed_out" {
    switch (d.kind) {
      case "cancelled":
        this.finish(r, "cancelled", now, emit, { error: { code: "cancelled", message: "cancelled by the client" } });
        return "cancelled";
      case "timed_out":
        this.finish(r, "timed_out", now, emit, { error: { code: "timed_out", message: `ran past timeout_seconds (${r.timeout_seconds})` } });
        return "timed_out";
      case "requeue":
        this.requeue(r, now, d.notBefore, d.reason, true, emit);
        return "requeued";
      case "failed":
        this.finish(r, "failed", now, emit, { error: d.error });
        return "failed";
    }
  }

  releaseLease(ref: LeaseRef, now: number, reason = "released"): Promise<"requeued" | "cancelled" | "stale"> {
    return settle(() =>
      this.tx((emit) => {
        const r = this.row(ref.jobId);
        if (!this.holds(r, ref)) return "stale";
        if (r.cancel_requested === 1) {
          this.finish(r, "cancelled", now, emit, { error: { code: "cancelled", message: "cancelled by the client" } });
          return "cancelled";
        }
        this.requeue(r, now, now, reason, false, emit);
        return "requeued";
      }),
    );
  }

  reapExpiredLeases(now: number, requeueBackoffMs: number): Promise<ReapedJob[]> {
    return settle(() =>
      this.tx((emit) => {
        const rows = this.sql("SELECT * FROM jobs WHERE status IN ('assigned','running') AND lease_expires_at < ?")
          .all(now) as JobRow[];
        return rows.map((r): ReapedJob => {
          const d = decideExpiry({ cancelRequested: r.cancel_requested === 1, failures: r.failures, maxAttempts: r.max_attempts }, now, requeueBackoffMs);
          return { jobId: r.id, attempt: r.attempt, minerId: r.miner_id, outcome: this.apply(r, d, now, emit) };
        });
      }),
    );
  }

  expireQueued(now: number, queueTtlMs: number): Promise<ReapedJob[]> {
    return settle(() =>
      this.tx((emit) => {
        const rows = this.sql("SELECT * FROM jobs WHERE status = 'queued' AND created_at < ?").all(now - queueTtlMs) as JobRow[];
        return rows.map((r): ReapedJob => {
          this.finish(r, "expired", now, emit, {
            error: { code: "expired", message: "no miner could run the job before the queue TTL ran out" },
          });
          return { jobId: r.id, attempt: r.attempt, minerId: null, outcome: "expired" };
        });
      }),
    );
  }

  timeOutRunning(now: number): Promise<ReapedJob[]> {
    return settle(() =>
      this.tx((emit) => {
        const rows = this.sql("SELECT * FROM jobs WHERE status = 'running' AND attempt_started_at + timeout_seconds * 1000 < ?")
          .all(now) as JobRow[];
        return rows.map((r): ReapedJob => {
          this.finish(r, "timed_out", now, emit, {
            error: { code: "timed_out", message: `ran past timeout_seconds (${r.timeout_seconds})` },
          });
          return { jobId: r.id, attempt: r.attempt, minerId: r.miner_id, outcome: "timed_out" };
        });
      }),
    );
  }

  listLeasedBy(minerId: string): Promise<JobRecord[]> {
    const rows = this.sql("SELECT * FROM jobs WHERE miner_id = ? AND status IN ('assigned','running')").all(minerId) as JobRow[];
    return Promise.resolve(rows.map(toJob));
  }

  // ------------------------------------------------------------------ keys

  createKey(kind: "client" | "miner", name: string, tenant: string, now: number): Promise<{ record: ApiKeyRecord; key: string }> {
    return settle(() =>
      this.tx(() => {
        const id = randomId("", 12);
        const secret = randomBytes(24).toString("base64url");
        const key = `aitbc_${kind === "client" ? "ck" : "mk"}_${id}_${secret}`;
        this.sql("INSERT INTO api_keys (id, kind, name, tenant, secret_hash, created_at) VALUES (?, ?, ?, ?, ?, ?)")
          .run(id, kind, name, tenant, sha256(secret), now);
        return { record: { id, kind, name, tenant, createdAt: now, revokedAt: null }, key };
      }),
    );
  }

  authenticate(rawKey: string, kind: "client" | "miner"): Promise<ApiKeyRecord | null> {
    const m = /^aitbc_(ck|mk)_([a-z0-9]{12})_([A-Za-z0-9_-]{32})$/.exec(rawKey);
    if (m === null || (m[1] === "ck") !== (kind === "client")) return Promise.resolve(null);
    const row = this.sql("SELECT * FROM api_keys WHERE id = ?").get(m[2]) as KeyRow | undefined;
    if (row === undefined || row.kind !== kind || row.revoked_at !== null) return Promise.resolve(null);
    return Promise.resolve(timingSafeEqual(row.secret_hash, sha256(m[3]!)) ? toKey(row) : null);
  }

  listKeys(): Promise<ApiKeyRecord[]> {
    const rows = this.sql("SELECT * FROM api_keys ORDER BY created_at, id").all() as KeyRow[];
    return Promise.resolve(rows.map(toKey));
  }

  revokeKey(id: string, now: number): Promise<boolean> {
    return settle(() =>
      this.tx(() => this.sql("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL").run(now, id).changes === 1),
    );
  }

  revokedAmong(ids: readonly string[]): Promise<string[]> {
    if (ids.length === 0) return Promise.resolve([]);
    return settle(() => {
      const out: string[] = [];
      // In slices: SQLite caps the number of bound parameters.
      for (let i = 0; i < ids.length; i += 500) {
        const slice = ids.slice(i, i + 500);
        const rows = this.db
          .prepare(`SELECT id FROM api_keys WHERE revoked_at IS NOT NULL AND id IN (${slice.map(() => "?").join(",")})`)
          .all(...slice) as { id: string }[];
        out.push(...rows.map((r) => r.id));
      }
      return out;
    });
  }

  close(): Promise<void> {
    if (!this.closed) {
      this.closed = true;
      this.db.close();
    }
    return Promise.resolve();
  }
}

/**
 * The verbs run synchronously (better-sqlite3) but promise a result: a throw must become a
 * rejected promise, not escape before the caller has a promise to catch on.
 */
function settle<T>(fn: () => T): Promise<T> {
  try {
    return Promise.resolve(fn());
  } catch (err) {
    return Promise.reject(err instanceof Error ? err : new Error(String(err)));
  }
}

function safeEqual(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

/** An Idempotency-Key reused with a different request body. */
export class IdempotencyMismatchError extends Error {
  constructor(readonly jobId: string) {
    super("this Idempotency-Key was used with a different request");
  }
}

const UNAVAILABLE_CODES = new Set(["SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_FULL", "SQLITE_IOERR", "SQLITE_READONLY", "SQLITE_CANTOPEN"]);

function storageError(err: unknown): unknown {
  const code = (err as { code?: unknown }).code;
  if (typeof code === "string" && [...UNAVAILABLE_CODES].some((c) => code.startsWith(c))) {
    return new UnavailableError("the job store is temporarily unavailable", { retryAfterSeconds: 1, cause: err });
  }
  return err;
}
