import { minerCanRun } from "../../scheduler/matching.js";
import { newLeaseToken } from "../ids.js";
import { storedResult, toJob, type JobRow } from "../job-row.js";
import type { Assignment, CommitOutcome, FailOutcome, JobRecord, LeaseRef, MinerCapabilities, StoredResult } from "../job-store.js";
import { CANCELLED_BY_CLIENT, decideCommit, decideExpiry, decideFail, EXPIRED_IN_QUEUE, holdsLease, timedOut } from "../transitions.js";
import type { ReapedJob } from "../job-store.js";
import type { SqliteDb } from "./sqlite-db.js";

/**
 * The miner side's verbs on SQLite, each fenced by the lease triple. SQLite has one writer (this
 * connection) and each verb is one IMMEDIATE transaction, so reading the row and then writing it
 * cannot race another verb.
 */

/** Queued jobs read per query while looking for one this miner can run (GPU requirements are checked in JS). */
const CLAIM_BATCH = 200;

export function claimJobs(db: SqliteDb, miner: MinerCapabilities, now: number, leaseTtlMs: number, max: number): Assignment[] {
  if (miner.models.length === 0 || max < 1) return [];
  return db.tx((emit) => {
    const marks = miner.models.map(() => "?").join(",");
    const select = db.sql(
      `SELECT * FROM jobs WHERE status = 'queued' AND not_before <= ? AND model IN (${marks})
         AND (priority_rank < ? OR (priority_rank = ? AND seq > ?))
       ORDER BY priority_rank DESC, seq ASC LIMIT ${CLAIM_BATCH}`,
    );
    let rank = 3;
    let seq = 0;
    const taken: Assignment[] = [];
    for (;;) {
      const rows = select.all(now, ...miner.models, rank, rank, seq) as JobRow[];
      if (rows.length === 0) return taken;
      for (const r of rows) {
        if (!minerCanRun(toJob(r), miner)) continue;
        const attempt = r.attempt + 1;
        const leaseToken = newLeaseToken();
        const leaseExpiresAt = now + leaseTtlMs;
        const updated = db
          .sql(
            `UPDATE jobs SET status = 'assigned', attempt = ?, lease_token = ?, lease_expires_at = ?, miner_id = ?,
               assigned_at = ?, progress = 0 WHERE id = ? AND status = 'queued' RETURNING *`,
          )
          .get(attempt, leaseToken, leaseExpiresAt, miner.minerId, now, r.id) as JobRow;
        emit({ jobId: r.id, type: "assigned", at: now, data: { attempt, miner_id: miner.minerId } });
        taken.push({ job: toJob(updated), attempt, leaseToken, leaseExpiresAt });
        if (taken.length === max) return taken;
      }
      const last = rows[rows.length - 1]!;
      rank = last.priority_rank;
      seq = last.seq;
    }
  });
}

export function markRunning(db: SqliteDb, ref: LeaseRef, now: number, leaseTtlMs: number): boolean {
  return db.tx((emit) => {
    const r = db.row(ref.jobId);
    if (r === undefined || !holdsLease(r, ref) || r.status !== "assigned") return false;
    db.sql(`UPDATE jobs SET status = 'running', started_at = COALESCE(started_at, ?), attempt_started_at = ?, lease_expires_at = ? WHERE id = ?`).run(
      now,
      now,
      now + leaseTtlMs,
      ref.jobId,
    );
    emit({ jobId: ref.jobId, type: "running", at: now, data: { attempt: ref.attempt, miner_id: r.miner_id } });
    return true;
  });
}

export function renewLease(db: SqliteDb, ref: LeaseRef, now: number, leaseTtlMs: number, progress?: number): { renewed: boolean; cancelRequested: boolean } {
  return db.tx(() => {
    const r = db.row(ref.jobId);
    if (r === undefined || !holdsLease(r, ref)) return { renewed: false, cancelRequested: false };
    db.sql("UPDATE jobs SET lease_expires_at = MAX(COALESCE(lease_expires_at, 0), ?), progress = COALESCE(?, progress) WHERE id = ?").run(
      now + leaseTtlMs,
      progress === undefined ? null : Math.max(0, Math.min(100, progress)),
      ref.jobId,
    );
    return { renewed: true, cancelRequested: r.cancel_requested === 1 };
  });
}

export function commitResult(db: SqliteDb, ref: LeaseRef, result: StoredResult, now: number): CommitOutcome {
  return db.tx((emit): CommitOutcome => {
    const r = db.row(ref.jobId);
    if (r === undefined) return "stale";
    const committed = storedResult(r);
    switch (decideCommit({ ...r, cancelRequested: r.cancel_requested === 1, committed }, ref, result.sha256)) {
      case "duplicate":
        return "duplicate";
      case "stale":
        return "stale";
      case "cancel":
        db.finish(r, "cancelled", now, emit, { error: CANCELLED_BY_CLIENT });
        return "stale";
      case "commit":
        db.finish(r, "completed", now, emit, { result: { ...result, attempt: ref.attempt } });
        db.addUsage(r.tenant, 0, result.bytes);
        return "committed";
    }
  });
}

export function failAttempt(db: SqliteDb, ref: LeaseRef, failure: { code: string; message: string; retryable: boolean }, now: number, requeueBackoffMs: number): FailOutcome {
  return db.tx((emit): FailOutcome => {
    const r = db.row(ref.jobId);
    if (r === undefined || !holdsLease(r, ref)) return "stale";
    const d = decideFail(
      { cancelRequested: r.cancel_requested === 1, failures: r.failures, maxAttempts: r.max_attempts, assignedAt: r.assigned_at, timeoutSeconds: r.timeout_seconds },
      failure,
      now,
      requeueBackoffMs,
    );
    return db.apply(r, d, now, emit);
  });
}

export function releaseLease(db: SqliteDb, ref: LeaseRef, now: number, reason: string): "requeued" | "cancelled" | "stale" {
  return db.tx((emit) => {
    const r = db.row(ref.jobId);
    if (r === undefined || !holdsLease(r, ref)) return "stale";
    if (r.cancel_requested === 1) {
      db.finish(r, "cancelled", now, emit, { error: CANCELLED_BY_CLIENT });
      return "cancelled";
    }
    db.requeue(r, now, now, reason, false, emit);
    return "requeued";
  });
}

export function listLeasedBy(db: SqliteDb, minerId: string): JobRecord[] {
  return db.read(() => (db.sql("SELECT * FROM jobs WHERE miner_id = ? AND status IN ('assigned','running')").all(minerId) as JobRow[]).map(toJob));
}

// ------------------------------------------------------------------ the reaper's verbs

export function reapExpiredLeases(db: SqliteDb, now: number, requeueBackoffMs: number): ReapedJob[] {
  return db.tx((emit) => {
    const rows = db.sql("SELECT * FROM jobs WHERE status IN ('assigned','running') AND lease_expires_at < ?").all(now) as JobRow[];
    return rows.map((r): ReapedJob => {
      const d = decideExpiry({ cancelRequested: r.cancel_requested === 1, failures: r.failures, maxAttempts: r.max_attempts }, now, requeueBackoffMs);
      return { jobId: r.id, attempt: r.attempt, minerId: r.miner_id, outcome: db.apply(r, d, now, emit) };
    });
  });
}

export function expireQueued(db: SqliteDb, now: number, queueTtlMs: number): ReapedJob[] {
  return db.tx((emit) => {
    const rows = db.sql("SELECT * FROM jobs WHERE status = 'queued' AND created_at < ?").all(now - queueTtlMs) as JobRow[];
    return rows.map((r): ReapedJob => {
      db.finish(r, "expired", now, emit, { error: EXPIRED_IN_QUEUE });
      return { jobId: r.id, attempt: r.attempt, minerId: null, outcome: "expired" };
    });
  });
}

export function timeOutRunning(db: SqliteDb, now: number): ReapedJob[] {
  return db.tx((emit) => {
    const rows = db.sql("SELECT * FROM jobs WHERE status = 'running' AND attempt_started_at + timeout_seconds * 1000 < ?").all(now) as JobRow[];
    return rows.map((r): ReapedJob => {
      db.finish(r, "timed_out", now, emit, { error: timedOut(r.timeout_seconds) });
      return { jobId: r.id, attempt: r.attempt, minerId: r.miner_id, outcome: "timed_out" };
    });
  });
}
