import type { JobState } from "../../../../protocol/version.js";
import { PRIORITY_RANK } from "../../job-row.js";
import type { JobRecord, SubmitCounts } from "../../job-store.js";
import type { PgDb } from "../pg-db.js";

/** Queued jobs, of a tenant or a model (on the partial index of queued jobs). */
export async function countQueued(db: PgDb, filter: { tenant?: string; model?: string }): Promise<number> {
  // One statement per filter, so the planner uses the partial index that fits (a generic
  // "$1 IS NULL OR tenant = $1" plan uses none).
  const where = ["status = 'queued'"];
  const params: string[] = [];
  if (filter.tenant !== undefined) where.push(`tenant = $${params.push(filter.tenant)}`);
  if (filter.model !== undefined) where.push(`model = $${params.push(filter.model)}`);
  return (await db.query<{ n: number }>(`SELECT COUNT(*)::int AS n FROM jobs WHERE ${where.join(" AND ")}`, params))[0]!.n;
}

/** usage and the two queue counts of a submit in one round trip (each subquery uses its partial index). */
export async function submitCounts(db: PgDb, tenant: string, model: string): Promise<SubmitCounts> {
  const r = (
    await db.query<{ file_bytes: number; result_bytes: number; tenant_queued: number; model_queued: number }>(
      `SELECT COALESCE((SELECT file_bytes FROM tenant_usage WHERE tenant = $1), 0) AS file_bytes,
              COALESCE((SELECT result_bytes FROM tenant_usage WHERE tenant = $1), 0) AS result_bytes,
              (SELECT COUNT(*)::int FROM jobs WHERE status = 'queued' AND tenant = $1) AS tenant_queued,
              (SELECT COUNT(*)::int FROM jobs WHERE status = 'queued' AND model = $2) AS model_queued`,
      [tenant, model],
    )
  )[0]!;
  return { usage: { fileBytes: r.file_bytes, resultBytes: r.result_bytes }, queuedForTenant: r.tenant_queued, queuedForModel: r.model_queued };
}

export async function countByState(db: PgDb): Promise<Partial<Record<JobState, number>>> {
  const rows = await db.query<{ status: JobState; n: number }>("SELECT status, COUNT(*)::int AS n FROM jobs GROUP BY status");
  return Object.fromEntries(rows.map((r) => [r.status, r.n]));
}

/** Queued jobs the scheduler would pick first: same model, higher priority, or same priority and submitted earlier. */
export async function queuePosition(db: PgDb, job: JobRecord): Promise<number> {
  const rank = PRIORITY_RANK[job.priority];
  return (
    await db.query<{ n: number }>(
      `SELECT COUNT(*)::int AS n FROM jobs WHERE status = 'queued' AND model = $1
         AND (priority_rank > $2 OR (priority_rank = $2 AND seq < (SELECT seq FROM jobs WHERE id = $3)))`,
      [job.model, rank, job.id],
    )
  )[0]!.n;
}
