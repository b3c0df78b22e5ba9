import { createHash } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import Database from "better-sqlite3";
import { databasePath } from "../../src/coordinator/coordinator.js";
import { attemptOf, readEventLogs, type LoggedEvent } from "./event-log.js";

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

/**
 * Where each terminal event may come from (the store's state machine, job-store.ts): from a
 * held lease (assigned or running), and then only by the attempt holding it, or from queued,
 * where no attempt holds one. A result, a failure or a timeout needs the lease; expiry is for
 * jobs that never got a miner; a cancel takes a queued job or the holder's attempt.
 */
const TERMINAL_FROM: Record<string, { queued: boolean; leased: boolean }> = {
  completed: { queued: false, leased: true },
  failed: { queued: false, leased: true },
  timed_out: { queued: false, leased: true },
  cancelled: { queued: true, leased: true },
  expired: { queued: true, leased: false },
};

export interface InvariantReport {
  jobs: number;
  byStatus: Record<string, number>;
  requeues: number;
  assignments: number;
  violations: string[];
}

export interface JobRow {
  id: string;
  status: string;
  attempt: number;
  /** jobs.result: JSON text (SQLite) or parsed jsonb (PostgreSQL). */
  result: unknown;
}

interface StoredResultRow {
  sha256: string;
  bytes: number;
  location: string;
  attempt: number;
}

function resultOf(j: JobRow): StoredResultRow | null {
  if (j.result === null || j.result === undefined) return null;
  return (typeof j.result === "string" ? JSON.parse(j.result) : j.result) as StoredResultRow;
}

/**
 * Reads a stopped coordinator's data dir (read-only) and checks the delivery guarantees of
 * DESIGN §3 from the jobs table and the job_events log (every state change is logged in the
 * same transaction): every accepted job exists; a terminal job has exactly one terminal event,
 * the last one, and at most one `completed`; a job's state is what its events say; leases never
 * overlap (attempt n+1 is assigned only after attempt n ended, attempts count up by one); every
 * event that acts on a lease (running, requeued, cancel_requested, completed, failed, timed_out,
 * a cancel of a leased job) comes while a lease is held and names the attempt holding it, and
 * each terminal event comes from a state it may follow (TERMINAL_FROM): the fencing the store
 * exists for; a completed job's result file exists and matches the sha256 and size in jobs.result.
 */
export function checkInvariants(dataDir: string, acceptedIds: Iterable<string>): InvariantReport {
  const db = new Database(databasePath(dataDir), { readonly: true, fileMustExist: true });
  let jobs: JobRow[];
  try {
    jobs = db.prepare("SELECT id, status, attempt, result FROM jobs").all() as JobRow[];
  } finally {
    db.close();
  }
  return checkRecords(jobs, readEventLogs(dataDir), acceptedIds, (location) => {
    const file = path.join(dataDir, "results", location);
    return existsSync(file) ? readFileSync(file) : undefined;
  });
}

/**
 * The same checks over records read from any store: the jobs, their event logs, and the bytes
 * each committed result location holds (undefined when it holds none).
 */
export function checkRecords(
  jobs: JobRow[],
  byJob: Map<string, LoggedEvent[]>,
  acceptedIds: Iterable<string>,
  resultBytes: (location: string) => Buffer | undefined,
): InvariantReport {
  const violations: string[] = [];
  const ids = new Set(jobs.map((j) => j.id));
  for (const id of acceptedIds) if (!ids.has(id)) violations.push(`${id}: accepted (2xx) but missing from the store`);

  const byStatus: Record<string, number> = {};
  let requeues = 0;
  let assignments = 0;
  for (const j of jobs) {
    byStatus[j.status] = (byStatus[j.status] ?? 0) + 1;
    const evs: LoggedEvent[] = byJob.get(j.id) ?? [];
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
    /** The attempt holding the lease: set by assigned, cleared by whatever ends the attempt. */
    let lease: number | undefined;
    let lastAttempt = 0;
    /** The event must act on the lease the job holds now, and name its attempt. */
    const onLease = (e: LoggedEvent): void => {
      const attempt = attemptOf(e);
      if (lease === undefined) bad(`${e.type} from state ${state}: attempt ${attempt} held no lease`);
      else if (attempt !== lease) bad(`${e.type} for attempt ${attempt} while attempt ${lease} held the lease`);
    };
    for (const [i, e] of evs.entries()) {
      const attempt = attemptOf(e);
      if (e.type === "completed") completedEvents++;
      if (terminalSeen) {
        bad(`event ${e.type} after a terminal event`);
        continue;
      }
      if (e.type === "queued") {
        if (i > 0) bad(`queued again at position ${i + 1}`);
      } else if (e.type === "assigned") {
        assignments++;
        if (lease !== undefined) bad(`attempt ${attempt} assigned while attempt ${lease} still held a lease`);
        if (attempt !== lastAttempt + 1) bad(`attempt ${attempt} assigned after attempt ${lastAttempt}`);
        if (state !== "queued") bad(`assigned from state ${state}`);
        lease = attempt;
        lastAttempt = attempt ?? lastAttempt;
      } else if (e.type === "running") {
        if (state !== "assigned" || attempt !== lease) bad(`running for attempt ${attempt} from state ${state}`);
      } else if (e.type === "requeued") {
        requeues++;
        onLease(e);
        lease = undefined;
      } else if (e.type === "cancel_requested") {
        onLease(e);
      } else if (TERMINAL.has(e.type)) {
        const from = TERMINAL_FROM[e.type]!;
        if (lease !== undefined) {
          if (from.leased) onLease(e);
          else bad(`${e.type} from state ${state} (attempt ${lease} held the lease)`);
        } else if (state !== "queued" || !from.queued) {
          bad(`${e.type} from state ${state}: attempt ${attempt} held no lease`);
        }
        lease = undefined;
        terminalSeen = true;
      }
      const next = STATE_AFTER[e.type];
      if (next !== undefined) state = next;
    }
    if (completedEvents > 1) bad(`${completedEvents} completed events`);
    const terminalEvents = evs.filter((e) => TERMINAL.has(e.type)).length;
    if (TERMINAL.has(j.status) && terminalEvents !== 1) bad(`terminal with ${terminalEvents} terminal events`);
    if (!TERMINAL.has(j.status) && terminalEvents !== 0) bad(`status ${j.status} but a terminal event was logged`);
    if (state !== j.status) bad(`status ${j.status} but the events end in ${state}`);

    if (j.status === "completed") {
      const result = resultOf(j);
      if (result === null) bad("completed without a result");
      else {
        if (result.attempt !== j.attempt) bad(`result of attempt ${result.attempt}, job at attempt ${j.attempt}`);
        const completed = evs.find((e) => e.type === "completed");
        if (completed !== undefined && attemptOf(completed) !== result.attempt) bad(`result of attempt ${result.attempt}, completed event of attempt ${attemptOf(completed)}`);
        const bytes = resultBytes(result.location);
        if (bytes === undefined) bad(`result file ${result.location} missing`);
        else {
          const sha = createHash("sha256").update(bytes).digest("hex");
          if (sha !== result.sha256 || bytes.length !== result.bytes) bad("result file does not match jobs.result sha256/bytes");
        }
      }
    }
  }
  return { jobs: jobs.length, byStatus, requeues, assignments, violations };
}
