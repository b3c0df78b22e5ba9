import { toEvent, toJob, type EventRow, type JobRow } from "../../job-row.js";
import type { JobEvent, JobRecord } from "../../job-store.js";
import type { PgDb } from "../pg-db.js";

export async function listEvents(db: PgDb, jobId: string, afterSeq: number): Promise<JobEvent[]> {
  return (await db.query<EventRow>("SELECT job_id, seq, type, data, at FROM job_events WHERE job_id = $1 AND seq > $2 ORDER BY seq", [jobId, afterSeq])).map(toEvent);
}

/**
 * The job's row and its events after a sequence number in one statement (one snapshot): the
 * events as a JSON array beside the row, so a row with a long prompt is not repeated per event.
 */
export async function jobWithEvents(db: PgDb, jobId: string, afterSeq: number): Promise<{ job: JobRecord | null; events: JobEvent[] }> {
  const r = (
    await db.query<JobRow & { events: EventRow[] }>(
      `SELECT j.*, COALESCE((SELECT json_agg(json_build_object('job_id', e.job_id, 'seq', e.seq, 'type', e.type, 'data', e.data, 'at', e.at) ORDER BY e.seq)
                               FROM job_events e WHERE e.job_id = j.id AND e.seq > $2), '[]'::json) AS events
         FROM jobs j WHERE j.id = $1`,
      [jobId, afterSeq],
    )
  )[0];
  return r === undefined ? { job: null, events: [] } : { job: toJob(r), events: r.events.map(toEvent) };
}
