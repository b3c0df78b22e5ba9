import type { JobState } from "../../../../protocol/version.js";
import { decodeCursor, encodeCursor } from "../../cursor.js";
import { toJob, type JobRow } from "../../job-row.js";
import type { JobRecord, Page } from "../../job-store.js";
import type { PgDb } from "../pg-db.js";

function page(rows: JobRow[], limit: number, total: number, key: (r: JobRow) => number): Page<JobRecord> {
  const more = rows.length > limit;
  const items = rows.slice(0, limit);
  const last = items[items.length - 1];
  return { items: items.map(toJob), total, nextCursor: more && last !== undefined ? encodeCursor(key(last), last.seq) : null };
}

/** The tenant's jobs, newest first, keyset-paged on (created_at, seq). */
export async function listJobs(db: PgDb, tenant: string, q: { status?: JobState; limit: number; cursor?: string }): Promise<Page<JobRecord>> {
  const cursor = decodeCursor(q.cursor);
  const status = q.status ?? null;
  const total = (await db.query<{ n: number }>("SELECT COUNT(*)::int AS n FROM jobs WHERE tenant = $1 AND ($2::text IS NULL OR status = $2)", [tenant, status]))[0]!.n;
  const rows = await db.query<JobRow>(
    `SELECT * FROM jobs WHERE tenant = $1 AND ($2::text IS NULL OR status = $2)
       AND ($3::bigint IS NULL OR created_at < $3 OR (created_at = $3 AND seq < $4))
     ORDER BY created_at DESC, seq DESC LIMIT $5`,
    [tenant, status, cursor?.[0] ?? null, cursor?.[1] ?? 0, q.limit + 1],
  );
  return page(rows, q.limit, total, (r) => r.created_at);
}

/** The tenant's finished jobs completed in [from, to], newest first, keyset-paged on (completed_at, seq). */
export async function listHistory(db: PgDb, tenant: string, q: { from: number; to: number; limit: number; cursor?: string }): Promise<Page<JobRecord>> {
  const cursor = decodeCursor(q.cursor);
  const where = `tenant = $1 AND completed_at IS NOT NULL AND status IN ('completed','failed','cancelled','timed_out','expired') AND completed_at >= $2 AND completed_at <= $3`;
  const total = (await db.query<{ n: number }>(`SELECT COUNT(*)::int AS n FROM jobs WHERE ${where}`, [tenant, q.from, q.to]))[0]!.n;
  const rows = await db.query<JobRow>(
    `SELECT * FROM jobs WHERE ${where} AND ($4::bigint IS NULL OR completed_at < $4 OR (completed_at = $4 AND seq < $5))
     ORDER BY completed_at DESC, seq DESC LIMIT $6`,
    [tenant, q.from, q.to, cursor?.[0] ?? null, cursor?.[1] ?? 0, q.limit + 1],
  );
  return page(rows, q.limit, total, (r) => r.completed_at ?? 0);
}
