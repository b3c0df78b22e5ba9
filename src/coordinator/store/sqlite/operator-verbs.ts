import { decodeCursor, encodeCursor } from "../cursor.js";
import { toJob, toMiner, type JobRow, type MinerRow } from "../job-row.js";
import type { AdminJobQuery, JobRecord, MinerRecord, Page, QueueDepth, ThroughputBucket } from "../job-store.js";
import type { SqliteDb } from "./sqlite-db.js";

/** The operator's reads over every tenant and the whole fleet, and the drain they keep per miner. */

export function listMiners(db: SqliteDb, seenSince: number): MinerRecord[] {
  return db.read(() =>
    (db.sql("SELECT * FROM miners WHERE connected = 1 OR last_seen_at >= ? ORDER BY connected DESC, name, id").all(seenSince) as MinerRow[]).map(toMiner),
  );
}

export function getMiner(db: SqliteDb, id: string): MinerRecord | null {
  const r = db.read(() => db.sql("SELECT * FROM miners WHERE id = ?").get(id) as MinerRow | undefined);
  return r === undefined ? null : toMiner(r);
}

export function getMinersById(db: SqliteDb, ids: readonly string[]): MinerRecord[] {
  return db.read(() => (db.sql("SELECT * FROM miners WHERE id IN (SELECT value FROM json_each(?))").all(JSON.stringify(ids)) as MinerRow[]).map(toMiner));
}

export function setMinerDrained(db: SqliteDb, id: string, drained: boolean): boolean {
  return db.tx(() => db.sql("UPDATE miners SET drained = ? WHERE id = ?").run(drained ? 1 : 0, id).changes === 1);
}

export function drainedAmong(db: SqliteDb, ids: readonly string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < ids.length; i += 500) {
    const slice = ids.slice(i, i + 500);
    const rows = db.read(() => db.db.prepare(`SELECT id FROM miners WHERE drained = 1 AND id IN (${slice.map(() => "?").join(",")})`).all(...slice) as { id: string }[]);
    out.push(...rows.map((r) => r.id));
  }
  return out;
}

export function listAllJobs(db: SqliteDb, q: AdminJobQuery): Page<JobRecord> {
  const cursor = decodeCursor(q.cursor);
  const where: string[] = [];
  if (q.status !== undefined) where.push("status = @status");
  if (q.model !== undefined) where.push("model = @model");
  if (q.tenant !== undefined) where.push("tenant = @tenant");
  if (q.minerId !== undefined) where.push("miner_id = @minerId");
  if (q.from !== undefined) where.push("created_at >= @from");
  if (q.to !== undefined) where.push("created_at <= @to");
  const params = { status: q.status ?? null, model: q.model ?? null, tenant: q.tenant ?? null, minerId: q.minerId ?? null, from: q.from ?? null, to: q.to ?? null, limit: q.limit + 1, ck: cursor?.[0] ?? 0, cseq: cursor?.[1] ?? 0 };
  const clause = (w: string[]): string => (w.length === 0 ? "" : `WHERE ${w.join(" AND ")}`);
  return db.read(() => {
    const total = (db.sql(`SELECT COUNT(*) AS n FROM jobs ${clause(where)}`).get(params) as { n: number }).n;
    const paged = cursor === undefined ? where : [...where, "(created_at < @ck OR (created_at = @ck AND seq < @cseq))"];
    const rows = db.sql(`SELECT * FROM jobs ${clause(paged)} ORDER BY created_at DESC, seq DESC LIMIT @limit`).all(params) as JobRow[];
    const more = rows.length > q.limit;
    const items = rows.slice(0, q.limit);
    const last = items[items.length - 1];
    return { items: items.map(toJob), total, nextCursor: more && last !== undefined ? encodeCursor(last.created_at, last.seq) : null };
  });
}

export function listActiveLeases(db: SqliteDb, limit: number): JobRecord[] {
  return db.read(() => (db.sql("SELECT * FROM jobs WHERE status IN ('assigned','running') ORDER BY assigned_at LIMIT ?").all(limit) as JobRow[]).map(toJob));
}

export function queueDepth(db: SqliteDb): QueueDepth[] {
  return db.read(() =>
    (db.sql("SELECT model, priority, COUNT(*) AS count FROM jobs WHERE status = 'queued' GROUP BY model, priority ORDER BY model, priority").all() as QueueDepth[]).map((r) => ({
      model: r.model,
      priority: r.priority,
      count: r.count,
    })),
  );
}

export function throughput(db: SqliteDb, since: number, bucketMs: number): ThroughputBucket[] {
  return db.read(() =>
    (
      db
        .sql(
          `SELECT CAST((completed_at - @since) / @bucket AS INTEGER) AS b, COUNT(*) AS jobs,
             COALESCE(SUM(json_extract(result, '$.usage.completion_tokens')), 0) AS tokens
           FROM jobs WHERE status = 'completed' AND completed_at >= @since GROUP BY b ORDER BY b`,
        )
        .all({ since, bucket: bucketMs }) as { b: number; jobs: number; tokens: number }[]
    ).map((r) => ({ start: since + Math.floor(r.b) * bucketMs, jobs: r.jobs, tokens: r.tokens })),
  );
}

export function recentFailures(db: SqliteDb, since: number, limit: number): JobRecord[] {
  return db.read(() =>
    (
      db
        .sql(
          `SELECT * FROM (
             SELECT * FROM jobs WHERE status = 'failed' AND completed_at >= @since
             UNION ALL SELECT * FROM jobs WHERE status = 'timed_out' AND completed_at >= @since
           ) ORDER BY completed_at DESC, seq DESC LIMIT @limit`,
        )
        .all({ since, limit }) as JobRow[]
    ).map(toJob),
  );
}
