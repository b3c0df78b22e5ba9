import type { JobState } from "../../../protocol/version.js";
import { decodeCursor, encodeCursor } from "../cursor.js";
import { timeOrderedId } from "../ids.js";
import { PRIORITY_RANK, newJobValues, toEvent, toJob, type EventRow, type JobRow } from "../job-row.js";
import type { CancelOutcome, JobEvent, JobRecord, NewJob, Page, SubmitCounts } from "../job-store.js";
import { IdempotencyMismatchError } from "../store-errors.js";
import { CANCELLED_BY_CLIENT, decideCancel } from "../transitions.js";
import type { SqliteDb } from "./sqlite-db.js";

/** The client side's verbs on SQLite: submit, read, list, cancel, counts. */

/** Commits a queued job, in a grouped transaction: submits arriving together share one durable commit. */
export function createJob(db: SqliteDb, job: NewJob, now: number): Promise<{ job: JobRecord; created: boolean }> {
  return db.txGrouped((emit) => {
    if (job.idempotency !== undefined) {
      const existing = db.sql("SELECT * FROM jobs WHERE tenant = ? AND idempotency_key = ?").get(job.tenant, job.idempotency.key) as JobRow | undefined;
      if (existing !== undefined) {
        if (existing.request_hash !== job.idempotency.requestHash) throw new IdempotencyMismatchError(existing.id);
        return { job: toJob(existing), created: false };
      }
    }
    const id = timeOrderedId("job_", now);
    const row = db
      .sql(
        `INSERT INTO jobs (id, tenant, model, input, input_file_id, output_format, destination, requirements,
           priority, priority_rank, timeout_seconds, parameters, status, progress, attempt, failures, max_attempts,
           cancel_requested, created_at, not_before, estimated_cost, estimated_time_seconds, idempotency_key, request_hash, retry_of)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'queued', 0, 0, 0, ?, 0, ?, 0, ?, ?, ?, ?, ?) RETURNING *`,
      )
      .get(...newJobValues(job, id, now)) as JobRow;
    emit({ jobId: id, type: "queued", at: now, data: { model: job.model, priority: job.priority, ...(job.retryOf === undefined ? {} : { retry_of: job.retryOf }) } });
    return { job: toJob(row), created: true };
  });
}

export function getJob(db: SqliteDb, tenant: string | null, jobId: string): JobRecord | null {
  // A polled status is the hottest read: the record (its JSON columns parsed once) is kept until
  // the database changes (SqliteDb.cachedRead). Frozen: every caller until then shares it.
  const job = db.cachedRead(`job ${jobId}`, () => {
    const r = db.row(jobId);
    return r === undefined ? undefined : deepFreeze(toJob(r));
  });
  return job === undefined || (tenant !== null && job.tenant !== tenant) ? null : job;
}

function deepFreeze<T>(value: T): T {
  if (typeof value === "object" && value !== null && !Object.isFrozen(value)) {
    for (const v of Object.values(value)) deepFreeze(v);
    Object.freeze(value);
  }
  return value;
}

export function getJobsById(db: SqliteDb, jobIds: readonly string[]): JobRecord[] {
  return db.read(() => (db.sql("SELECT * FROM jobs WHERE id IN (SELECT value FROM json_each(?))").all(JSON.stringify(jobIds)) as JobRow[]).map(toJob));
}

function page(rows: JobRow[], limit: number, total: number, key: (r: JobRow) => number): Page<JobRecord> {
  const more = rows.length > limit;
  const items = rows.slice(0, limit);
  const last = items[items.length - 1];
  return { items: items.map(toJob), total, nextCursor: more && last !== undefined ? encodeCursor(key(last), last.seq) : null };
}

export function listJobs(db: SqliteDb, tenant: string, q: { status?: JobState; limit: number; cursor?: string }): Page<JobRecord> {
  const cursor = decodeCursor(q.cursor);
  const where = ["tenant = @tenant"];
  if (q.status !== undefined) where.push("status = @status");
  const params = { tenant, status: q.status ?? null, limit: q.limit + 1, ck: cursor?.[0] ?? 0, cseq: cursor?.[1] ?? 0 };
  return db.read(() => {
    const total = (db.sql(`SELECT COUNT(*) AS n FROM jobs WHERE ${where.join(" AND ")}`).get(params) as { n: number }).n;
    if (cursor !== undefined) where.push("(created_at < @ck OR (created_at = @ck AND seq < @cseq))");
    const rows = db.sql(`SELECT * FROM jobs WHERE ${where.join(" AND ")} ORDER BY created_at DESC, seq DESC LIMIT @limit`).all(params) as JobRow[];
    return page(rows, q.limit, total, (r) => r.created_at);
  });
}

export function listHistory(db: SqliteDb, tenant: string, q: { from: number; to: number; limit: number; cursor?: string }): Page<JobRecord> {
  const cursor = decodeCursor(q.cursor);
  const where = [
    "tenant = @tenant",
    "completed_at IS NOT NULL",
    "status IN ('completed','failed','cancelled','timed_out','expired')",
    "completed_at >= @from AND completed_at <= @to",
  ];
  const params = { tenant, from: q.from, to: q.to, limit: q.limit + 1, ck: cursor?.[0] ?? 0, cseq: cursor?.[1] ?? 0 };
  return db.read(() => {
    const total = (db.sql(`SELECT COUNT(*) AS n FROM jobs WHERE ${where.join(" AND ")}`).get(params) as { n: number }).n;
    if (cursor !== undefined) where.push("(completed_at < @ck OR (completed_at = @ck AND seq < @cseq))");
    const rows = db.sql(`SELECT * FROM jobs WHERE ${where.join(" AND ")} ORDER BY completed_at DESC, seq DESC LIMIT @limit`).all(params) as JobRow[];
    return page(rows, q.limit, total, (r) => r.completed_at ?? 0);
  });
}

export function requestCancel(db: SqliteDb, tenant: string, jobId: string, now: number): CancelOutcome | null {
  return db.tx((emit): CancelOutcome | null => {
    const r = db.row(jobId);
    if (r === undefined || r.tenant !== tenant) return null;
    switch (decideCancel(r.status)) {
      case "cancel_now":
        db.finish(r, "cancelled", now, emit, { error: CANCELLED_BY_CLIENT });
        return { outcome: "cancelled", job: toJob(db.mustRow(jobId)) };
      case "request_stop":
        if (r.cancel_requested === 0) {
          db.sql("UPDATE jobs SET cancel_requested = 1 WHERE id = ?").run(jobId);
          emit({ jobId, type: "cancel_requested", at: now, data: { attempt: r.attempt, miner_id: r.miner_id } });
        }
        return { outcome: "cancel_requested", job: toJob(db.mustRow(jobId)) };
      case "conflict":
        return { outcome: "conflict", job: toJob(r) };
    }
  });
}

export function countQueued(db: SqliteDb, filter: { tenant?: string; model?: string }): number {
  // queue_counts is kept by triggers on jobs (migration 8): a few rows, not the whole queue.
  const where: string[] = [];
  if (filter.tenant !== undefined) where.push("tenant = @tenant");
  if (filter.model !== undefined) where.push("model = @model");
  const sql = `SELECT COALESCE(SUM(n), 0) AS n FROM queue_counts${where.length === 0 ? "" : ` WHERE ${where.join(" AND ")}`}`;
  return db.read(() => (db.sql(sql).get({ tenant: filter.tenant ?? null, model: filter.model ?? null }) as { n: number }).n);
}

export function submitCounts(db: SqliteDb, tenant: string, model: string): SubmitCounts {
  // One statement: each read of its own cost a read transaction, a tenth of a submit's time.
  const r = db.read(
    () =>
      db
        .sql(
          `SELECT COALESCE((SELECT file_bytes FROM tenant_usage WHERE tenant = @tenant), 0) AS file_bytes,
                  COALESCE((SELECT result_bytes FROM tenant_usage WHERE tenant = @tenant), 0) AS result_bytes,
                  (SELECT COALESCE(SUM(n), 0) FROM queue_counts WHERE tenant = @tenant) AS tenant_queued,
                  (SELECT COALESCE(SUM(n), 0) FROM queue_counts WHERE model = @model) AS model_queued`,
        )
        .get({ tenant, model }) as { file_bytes: number; result_bytes: number; tenant_queued: number; model_queued: number },
  );
  return { usage: { fileBytes: r.file_bytes, resultBytes: r.result_bytes }, queuedForTenant: r.tenant_queued, queuedForModel: r.model_queued };
}

export function countByState(db: SqliteDb): Partial<Record<JobState, number>> {
  const rows = db.read(() => db.sql("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status").all() as { status: JobState; n: number }[]);
  return Object.fromEntries(rows.map((r) => [r.status, r.n]));
}

/** Queued jobs the scheduler would pick first: same model, higher priority, or same priority and submitted earlier (seq). */
export function queuePosition(db: SqliteDb, job: JobRecord): number {
  // Two range counts on jobs_queue_model, so the cost is the jobs ahead, not the whole queue of
  // the model (one OR of both walked every queued row of it); one statement, kept until the
  // database changes, since a waiting client polls it.
  const rank = PRIORITY_RANK[job.priority];
  // The id is the key: a job's model and priority never change.
  return db.cachedRead(`queue position ${job.id}`, () => {
    const row = db
      .sql(
        `SELECT (SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND model = @model AND priority_rank > @rank)
              + (SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND model = @model AND priority_rank = @rank
                   AND seq < COALESCE((SELECT seq FROM jobs WHERE id = @id), 0)) AS n`,
      )
      .get({ model: job.model, rank, id: job.id }) as { n: number };
    return row.n;
  });
}

export function listEvents(db: SqliteDb, jobId: string, afterSeq: number): JobEvent[] {
  const rows = db.read(() => db.sql("SELECT job_id, seq, type, data, at FROM job_events WHERE job_id = ? AND seq > ? ORDER BY seq").all(jobId, afterSeq) as EventRow[]);
  return rows.map(toEvent);
}

/** The job, then its events, in one synchronous turn (nothing of this process writes between the two; SQLite reads cost no round trip). */
export function jobWithEvents(db: SqliteDb, jobId: string, afterSeq: number): { job: JobRecord | null; events: JobEvent[] } {
  const job = getJob(db, null, jobId);
  return { job, events: job === null ? [] : listEvents(db, jobId, afterSeq) };
}
