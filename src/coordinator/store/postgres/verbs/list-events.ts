import { toEvent, type EventRow } from "../../job-row.js";
import type { JobEvent } from "../../job-store.js";
import type { PgDb } from "../pg-db.js";

export async function listEvents(db: PgDb, jobId: string, afterSeq: number): Promise<JobEvent[]> {
  return (await db.query<EventRow>("SELECT job_id, seq, type, data, at FROM job_events WHERE job_id = $1 AND seq > $2 ORDER BY seq", [jobId, afterSeq])).map(toEvent);
}
