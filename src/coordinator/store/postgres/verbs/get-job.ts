import { toJob, type JobRow } from "../../job-row.js";
import type { JobRecord } from "../../job-store.js";
import type { PgDb } from "../pg-db.js";

/** A job by id; with a tenant, only that tenant's (another's is null, as if it did not exist). */
export async function getJob(db: PgDb, tenant: string | null, jobId: string): Promise<JobRecord | null> {
  const r = (await db.query<JobRow>("SELECT * FROM jobs WHERE id = $1", [jobId]))[0];
  return r === undefined || (tenant !== null && r.tenant !== tenant) ? null : toJob(r);
}

export async function getJobsById(db: PgDb, jobIds: readonly string[]): Promise<JobRecord[]> {
  return (await db.query<JobRow>("SELECT * FROM jobs WHERE id = ANY($1::text[])", [jobIds])).map(toJob);
}
