import { createHash } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import Database from "better-sqlite3";
import { databasePath } from "../../src/coordinator/coordinator.js";

const TERMINAL = new Set(["completed", "failed", "cancelled", "timed_out", "expired"]);
/** The state each event type leaves a job in; other types (cancel_requested) change no state. */
const STATE_AFTER: Record<string, string> = {
  queued: "queued",
  requeued: "queued",
  assigned: "assigned",
  running: "running",
  completed: "completed",
  failed: "failed",
  cancelled: "cancelled",
  timed_out: "timed_out",
  expired: "expired",
};

export interface InvariantReport {
  jobs: number;
  byStatus: Record<string, number>;
  requeues: number;
  assignments: number;
  violations: string[];
}

interface JobRow {
  id: string;
  status: string;
  attempt: number;
  result: string | null;
}

interface EventRow {
  job_id: string;
  seq: number;
  type: string;
  data: string;
}

/**
 * Reads a stopped coordinator's data dir (read-only) and checks the delivery guarantees of
 * DESIGN §3 from the jobs table and the job_events log (every state change is logged in the
 * same transaction): every accepted job exists; a terminal job has exactly one terminal event,
 * the last one, and at most one `completed`; a job's state is what its events say; leases never
 * overlap (attempt n+1 is assigned only after attempt n ended, attempts count up by one); a
 * completed job's result file exists and matches the sha256 and size in jobs.result.
 */
export function checkInvariants(dataDir: string, acceptedIds: Iterable<string>): InvariantReport {
  const db = new Database(databasePath(dataDir), { readonly: true, fileMustExist: true });
  try {
    const jobs = db.prepare("SELECT id, status, attempt, result FROM jobs").all() as JobRow[];
    const events = db.prepare("SELECT job_id, seq, type, data FROM job_events ORDER BY job_id, seq").all() as EventRow[];
    const byJob = new Map<string, EventRow[]>();
    for (const e of events) {
      const list = byJob.get(e.job_id) ?? [];
      list.push(e);
      byJob.set(e.job_id, list);
    }
    const violations: string[] = [];
    const ids = new Set(jobs.map((j) => j.id));
    for (const id of acceptedIds) if (!ids.has(id)) violations.push(`${id}: accepted (2xx) but missing from the store`);

    const byStatus: Record<string, number> = {};
    let requeues = 0;
    let assignments = 0;
    for (const j of jobs) {
      byStatus[j.status] = (byStatus[j.status] ?? 0) + 1;
      const evs = byJob.get(j.id) ?? [];
      const bad = (what: string): void => {
        violations.push(`${j.id}: ${what} [${evs.map((e) => e.type).join(",")}]`);
      };
      if (evs[0]?.type !== "queued") bad("first event is not queued");
      evs.forEach((e, i) => {
        if (e.seq !== i + 1) bad(`event seq ${e.seq} at position ${i + 1}`);
      });

      let state: string | undefined;
      let terminalSeen = false;
      let completedEvents = 0;
      let openAttempt: number | undefined;
      let lastAttempt = 0;
      for (const e of evs) {
        const data = JSON.parse(e.data) as { attempt?: number };
        if (terminalSeen) bad(`event ${e.type} after a terminal event`);
        if (e.type === "completed") completedEvents++;
        if (e.type === "assigned") {
          assignments++;
          if (openAttempt !== undefined) bad(`attempt ${data.attempt} assigned while attempt ${openAttempt} still held a lease`);
          if (data.attempt !== lastAttempt + 1) bad(`attempt ${data.attempt} assigned after attempt ${lastAttempt}`);
          if (state !== "queued") bad(`assigned from state ${state}`);
          openAttempt = data.attempt;
          lastAttempt = data.attempt ?? lastAttempt;
        } else if (e.type === "running") {
          if (state !== "assigned" || data.attempt !== openAttempt) bad(`running for attempt ${data.attempt} from state ${state}`);
        } else if (e.type === "requeued" || (TERMINAL.has(e.type) && openAttempt !== undefined)) {
          if (e.type === "requeued") requeues++;
          if (openAttempt === undefined || data.attempt !== openAttempt) bad(`${e.type} for attempt ${data.attempt} without its lease`);
          openAttempt = undefined;
        }
        if (TERMINAL.has(e.type)) terminalSeen = true;
        const next = STATE_AFTER[e.type];
        if (next !== undefined) state = next;
      }
      if (completedEvents > 1) bad(`${completedEvents} completed events`);
      const terminalEvents = evs.filter((e) => TERMINAL.has(e.type)).length;
      if (TERMINAL.has(j.status) && terminalEvents !== 1) bad(`terminal with ${terminalEvents} terminal events`);
      if (!TERMINAL.has(j.status) && terminalEvents !== 0) bad(`status ${j.status} but a terminal event was logged`);
      if (state !== j.status) bad(`status ${j.status} but the events end in ${state}`);

      if (j.status === "completed") {
        const result = j.result === null ? null : (JSON.parse(j.result) as { sha256: string; bytes: number; location: string; attempt: number });
        if (result === null) bad("completed without a result");
        else {
          if (result.attempt !== j.attempt) bad(`result of attempt ${result.attempt}, job at attempt ${j.attempt}`);
          const file = path.join(dataDir, "results", result.location);
          if (!existsSync(file)) bad(`result file ${result.location} missing`);
          else {
            const bytes = readFileSync(file);
            const sha = createHash("sha256").update(bytes).digest("hex");
            if (sha !== result.sha256 || bytes.length !== result.bytes) bad("result file does not match jobs.result sha256/bytes");
          }
        }
      }
    }
    return { jobs: jobs.length, byStatus, requeues, assignments, violations };
  } finally {
    db.close();
  }
}
