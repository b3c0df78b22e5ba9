import Database from "better-sqlite3";
import { databasePath } from "../../src/coordinator/coordinator.js";

/** One row of a job's event log as the coordinator committed it. */
export interface LoggedEvent {
  jobId: string;
  seq: number;
  type: string;
  data: Record<string, unknown>;
  /** Coordinator clock, epoch ms. */
  at: number;
}

/**
 * Every job's event log, read from a stopped coordinator's data dir (read-only), each in seq
 * order: what the invariant checker walks, and what a test reads for when and why things
 * happened (requeue reasons, the gap between an assignment and its start).
 */
export function readEventLogs(dataDir: string): Map<string, LoggedEvent[]> {
  const db = new Database(databasePath(dataDir), { readonly: true, fileMustExist: true });
  try {
    const rows = db.prepare("SELECT job_id, seq, type, data, at FROM job_events ORDER BY job_id, seq").all() as {
      job_id: string;
      seq: number;
      type: string;
      data: string;
      at: number;
    }[];
    const byJob = new Map<string, LoggedEvent[]>();
    for (const r of rows) {
      const list = byJob.get(r.job_id) ?? [];
      list.push({ jobId: r.job_id, seq: r.seq, type: r.type, data: JSON.parse(r.data) as Record<string, unknown>, at: r.at });
      byJob.set(r.job_id, list);
    }
    return byJob;
  } finally {
    db.close();
  }
}

/** The attempt an event names, when it names one. */
export function attemptOf(e: LoggedEvent): number | undefined {
  return typeof e.data.attempt === "number" ? e.data.attempt : undefined;
}
