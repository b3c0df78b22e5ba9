import type { Priority } from "../../../../protocol/version.js";
import { decodeCursor, encodeCursor } from "../../cursor.js";
import { toJob, toMiner, type JobRow, type MinerRow } from "../../job-row.js";
import type { AdminJobQuery, JobRecord, MinerRecord, Page, QueueDepth, ThroughputBucket } from "../../job-store.js";
import type { PgDb } from "../pg-db.js";
import { CONTROL_CHANNEL } from "./miners.js";

/** The operator's reads over every tenant and the whole fleet, and the drain they keep per miner. */

export async function listMiners(db: PgDb, seenSince: number): Promise<MinerRecord[]> {
  return (await db.query<MinerRow>("SELECT * FROM miners WHERE connected OR last_seen_at >= $1 ORDER BY connected DESC, name, id", [seenSince])).map(toMiner);
}

export async function getMiner(db: PgDb, id: string): Promise<MinerRecord | null> {
  const r = (await db.query<MinerRow>("SELECT * FROM miners WHERE id = $1", [id]))[0];
  return r === undefined ? null : toMiner(r);
}

export async function getMinersById(db: PgDb, ids: readonly string[]): Promise<MinerRecord[]> {
  return (await db.query<MinerRow>("SELECT * FROM miners WHERE id = ANY($1::text[])", [ids])).map(toMiner);
}

/** The drain is the row's; the replica holding the miner hears of it in the same transaction (`{k: "drain"}`). */
export function setMinerDrained(db: PgDb, id: string, drained: boolean): Promise<boolean> {
  return db.tx(async (c) => {
    const r = await c.query("UPDATE miners SET drained = $1 WHERE id = $2", [drained, id]);
    if (r.rowCount !== 1) return false;
    await c.query("SELECT pg_notify($1, $2)", [CONTROL_CHANNEL, JSON.stringify({ k: "drain", id, d: drained })]);
    return true;
  });
}

export async function drainedAmong(db: PgDb, ids: readonly string[]): Promise<string[]> {
  if (ids.length === 0) return [];
  return (await db.query<{ id: string }>("SELECT id FROM miners WHERE drained AND id = ANY($1::text[])", [ids])).map((r) => r.id);
}

export async function listAllJobs(db: PgDb, q: AdminJobQuery): Promise<Page<JobRecord>> {
  const cursor = decodeCursor(q.cursor);
  const where = `($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR model = $2) AND ($3::text IS NULL OR tenant = $3)
    AND ($4::text IS NULL OR miner_id = $4) AND ($5::bigint IS NULL OR created_at >= $5) AND ($6::bigint IS NULL OR created_at <= $6)`;
  const params = [q.status ?? null, q.model ?? null, q.tenant ?? null, q.minerId ?? null, q.from ?? null, q.to ?? null];
  const total = (await db.query<{ n: number }>(`SELECT COUNT(*)::int AS n FROM jobs WHERE ${where}`, params))[0]!.n;
  const rows = await db.query<JobRow>(
    `SELECT * FROM jobs WHERE ${where} AND ($7::bigint IS NULL OR created_at < $7 OR (created_at = $7 AND seq < $8))
     ORDER BY created_at DESC, seq DESC LIMIT $9`,
    [...params, cursor?.[0] ?? null, cursor?.[1] ?? 0, q.limit + 1],
  );
  const more = rows.length > q.limit;
  const items = rows.slice(0, q.limit);
  const last = items[items.length - 1];
  return { items: items.map(toJob), total, nextCursor: more && last !== undefined ? encodeCursor(last.created_at, last.seq) : null };
}

export async function listActiveLeases(db: PgDb, limit: number): Promise<JobRecord[]> {
  return (await db.query<JobRow>("SELECT * FROM jobs WHERE status IN ('assigned','running') ORDER BY assigned_at LIMIT $1", [limit])).map(toJob);
}

export async function queueDepth(db: PgDb): Promise<QueueDepth[]> {
  const rows = await db.query<{ model: string; priority: string; count: number }>(
    "SELECT model, priority, COUNT(*)::int AS count FROM jobs WHERE status = 'queued' GROUP BY model, priority ORDER BY model, priority",
  );
  return rows.map((r) => ({ model: r.model, priority: r.priority as Priority, count: r.count }));
}

export async function throughput(db: PgDb, since: number, bucketMs: number): Promise<ThroughputBucket[]> {
  const rows = await db.query<{ b: number; jobs: number; tokens: number }>(
    `SELECT ((completed_at - $1) / $2)::int AS b, COUNT(*)::int AS jobs,
       COALESCE(SUM((result->'usage'->>'completion_tokens')::bigint), 0)::bigint AS tokens
     FROM jobs WHERE status = 'completed' AND completed_at >= $1 GROUP BY b ORDER BY b`,
    [since, bucketMs],
  );
  return rows.map((r) => ({ start: since + r.b * bucketMs, jobs: r.jobs, tokens: Number(r.tokens) }));
}

export async function recentFailures(db: PgDb, since: number, limit: number): Promise<JobRecord[]> {
  return (
    await db.query<JobRow>("SELECT * FROM jobs WHERE status IN ('failed','timed_out') AND completed_at >= $1 ORDER BY completed_at DESC, seq DESC LIMIT $2", [since, limit])
  ).map(toJob);
}
