import { toJob, type JobRow } from "../../job-row.js";
import type { JobRecord } from "../../job-store.js";
import type { PgDb } from "../pg-db.js";

export async function listLeasedBy(db: PgDb, minerId: string): Promise<JobRecord[]> {
  return (await db.query<JobRow>("SELECT * FROM jobs WHERE miner_id = $1 AND status IN ('assigned', 'running')", [minerId])).map(toJob);
}
