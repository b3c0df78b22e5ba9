import type { JobState } from "../../../protocol/version.js";
import type { KeyKind } from "../../auth/api-key.js";
import { JobEvents } from "../job-events.js";
import type {
  AdminJobQuery,
  QueueDepth,
  ThroughputBucket,
  ApiKeyRecord,
  Assignment,
  CancelOutcome,
  CommitOutcome,
  FailOutcome,
  FileRecord,
  JobEvent,
  JobRecord,
  JobStore,
  LeaseRef,
  MinerCapabilities,
  MinerRecord,
  MinerTouch,
  MinerSessionOpened,
  MinerSessionOpening,
  NewJob,
  Page,
  ReapedJob,
  StoredResult,
  SubmitCounts,
  TenantUsage,
} from "../job-store.js";
import { migrate } from "./migrations.js";
import { Backoff } from "../../../common/backoff.js";
import { errorMessage } from "../../../common/errors.js";
import { PgDb, isConnectionError, storageError, type PgDbOptions } from "./pg-db.js";
import { claimJobs } from "./verbs/claim-jobs.js";
import { commitResult } from "./verbs/commit-result.js";
import { createJob } from "./verbs/create-job.js";
import { expireQueued } from "./verbs/expire-queued.js";
import { failAttempt } from "./verbs/fail-attempt.js";
import { createFile, deleteFile, expireFiles, getFile } from "./verbs/files.js";
import { getJob, getJobsById } from "./verbs/get-job.js";
import { authenticate, createKey, getKey, listKeys, revokeKey, revokedAmong } from "./verbs/keys.js";
import * as operator from "./verbs/operator.js";
import { jobWithEvents, listEvents } from "./verbs/list-events.js";
import { listHistory, listJobs } from "./verbs/list-jobs.js";
import { listLeasedBy } from "./verbs/list-leased-by.js";
import { markRunning } from "./verbs/mark-running.js";
import { closeMinerSession, listConnectedMiners, openMinerSession, touchMiners } from "./verbs/miners.js";
import { countByState, countQueued, queuePosition, submitCounts } from "./verbs/queue-counts.js";
import { reapExpiredLeases } from "./verbs/reap-expired-leases.js";
import { releaseLease } from "./verbs/release-lease.js";
import { renewLease } from "./verbs/renew-lease.js";
import { requestCancel } from "./verbs/request-cancel.js";
import { claimPendingUploads, expireResults, listPendingUploads, recordUpload, removeResult, usage } from "./verbs/results.js";
import { timeOutRunning } from "./verbs/time-out-running.js";

/**
 * The job store of several coordinator replicas: one PostgreSQL database (`pg` 8), one verb per
 * module under verbs/ in graphile-worker's manner, the rules from ../transitions.ts, fencing in
 * the database (every lease verb locks the row or is one conditional UPDATE on the whole lease;
 * claims and the reaper take rows with SKIP LOCKED). Submits and results commit synchronously
 * (accepted means durable); lease renewals asynchronously.
 */
export class PostgresJobStore implements JobStore {
  private constructor(readonly db: PgDb) {}

  get events(): JobEvents {
    return this.db.events;
  }

  private retryTimer: NodeJS.Timeout | undefined;

  /**
   * Connects, migrates (once across replicas) and returns the store. With `waitForDatabase` (a
   * coordinator replica), a database that cannot be reached, or refuses the credentials, does not
   * stop the start: the store answers UnavailableError (503) and keeps trying, with the shared
   * backoff, until it migrates; `onReady` says when. A schema newer than the code always fails.
   */
  static async open(
    options: PgDbOptions,
    events: JobEvents = new JobEvents(),
    wait: { waitForDatabase?: boolean; onWaiting?: (why: string) => void; onReady?: () => void } = {},
  ): Promise<PostgresJobStore> {
    const db = new PgDb(options, events);
    const store = new PostgresJobStore(db);
    try {
      await migrate(db);
    } catch (err) {
      if (wait.waitForDatabase !== true || !isConnectionError(err)) {
        await db.close();
        throw err;
      }
      db.notReady = errorMessage(err);
      wait.onWaiting?.(db.notReady);
      store.retryMigration(new Backoff({ baseMs: 500, maxMs: 10_000 }), wait);
    }
    return store;
  }

  private retryMigration(backoff: Backoff, wait: { onWaiting?: (why: string) => void; onReady?: () => void }): void {
    this.retryTimer = setTimeout(() => {
      migrate(this.db).then(
        () => {
          this.db.notReady = undefined;
          wait.onReady?.();
        },
        (err: unknown) => {
          if (this.db.isClosed) return;
          this.db.notReady = errorMessage(err);
          wait.onWaiting?.(this.db.notReady);
          this.retryMigration(backoff, wait);
        },
      );
    }, backoff.next());
    this.retryTimer.unref();
  }

  createJob(job: NewJob, now: number): Promise<{ job: JobRecord; created: boolean }> {
    return createJob(this.db, job, now);
  }
  getJob(tenant: string, jobId: string): Promise<JobRecord | null> {
    return getJob(this.db, tenant, jobId);
  }
  readVersion(): undefined {
    return undefined;
  }
  getJobById(jobId: string): Promise<JobRecord | null> {
    return getJob(this.db, null, jobId);
  }
  getJobsById(jobIds: readonly string[]): Promise<JobRecord[]> {
    return getJobsById(this.db, jobIds);
  }
  listJobs(tenant: string, q: { status?: JobState; limit: number; cursor?: string }): Promise<Page<JobRecord>> {
    return listJobs(this.db, tenant, q);
  }
  listHistory(tenant: string, q: { from: number; to: number; limit: number; cursor?: string }): Promise<Page<JobRecord>> {
    return listHistory(this.db, tenant, q);
  }
  requestCancel(tenant: string, jobId: string, now: number): Promise<CancelOutcome | null> {
    return requestCancel(this.db, tenant, jobId, now);
  }
  countQueued(filter: { tenant?: string; model?: string }): Promise<number> {
    return countQueued(this.db, filter);
  }
  countByState(): Promise<Partial<Record<JobState, number>>> {
    return countByState(this.db);
  }
  queuePosition(job: JobRecord): Promise<number> {
    return queuePosition(this.db, job);
  }
  listEvents(jobId: string, afterSeq: number): Promise<JobEvent[]> {
    return listEvents(this.db, jobId, afterSeq);
  }
  jobWithEvents(jobId: string, afterSeq: number): Promise<{ job: JobRecord | null; events: JobEvent[] }> {
    return jobWithEvents(this.db, jobId, afterSeq);
  }

  createFile(tenant: string, content: string, upload: { sha256: string; bytes: number }, now: number): Promise<FileRecord> {
    return createFile(this.db, tenant, content, upload, now);
  }
  getFile(tenant: string, fileId: string): Promise<FileRecord | null> {
    return getFile(this.db, tenant, fileId);
  }
  deleteFile(tenant: string, fileId: string): Promise<boolean> {
    return deleteFile(this.db, tenant, fileId);
  }
  usage(tenant: string): Promise<TenantUsage> {
    return usage(this.db, tenant);
  }
  submitCounts(tenant: string, model: string): Promise<SubmitCounts> {
    return submitCounts(this.db, tenant, model);
  }
  removeResult(tenant: string, jobId: string, reason: "deleted", now: number): Promise<{ location: string } | null> {
    return removeResult(this.db, tenant, jobId, reason, now);
  }
  expireResults(before: number, now: number, limit: number): Promise<{ jobId: string; location: string }[]> {
    return expireResults(this.db, before, now, limit);
  }
  expireFiles(before: number, limit: number): Promise<number> {
    return expireFiles(this.db, before, limit);
  }
  recordUpload(jobId: string, outcome: { uri: string; attempts: number } | { error: { code: string; message: string }; attempts: number }, now: number): Promise<boolean> {
    return recordUpload(this.db, jobId, outcome, now);
  }
  listPendingUploads(limit: number): Promise<JobRecord[]> {
    return listPendingUploads(this.db, limit);
  }
  /** The re-drive's claim on pending uploads (see verbs/results.ts). */
  claimPendingUploads(now: number, claimMs: number, limit: number): Promise<JobRecord[]> {
    return claimPendingUploads(this.db, now, claimMs, limit);
  }

  /** A session advisory lock named by `name`, held while fn runs (pg_try_advisory_lock: never waits). */
  async runExclusive<T>(name: string, fn: () => Promise<T>): Promise<T | undefined> {
    const client = await this.db.pool.connect().catch((err: unknown) => {
      throw storageError(err);
    });
    // Held while fn runs on other connections: a reset of this one meanwhile must not be an
    // uncaught 'error' (the unlock then fails, and the broken client is not pooled again).
    let broken = false;
    const onError = (): void => {
      broken = true;
    };
    client.on("error", onError);
    try {
      const got = (await client.query<{ ok: boolean }>("SELECT pg_try_advisory_lock(hashtext($1)) AS ok", [`aitbc:${name}`])).rows[0]?.ok === true;
      if (!got) return undefined;
      try {
        return await fn();
      } finally {
        if (!broken) await client.query("SELECT pg_advisory_unlock(hashtext($1))", [`aitbc:${name}`]).catch(() => (broken = true));
      }
    } finally {
      client.off("error", onError);
      client.release(broken);
    }
  }

  async claimNextJob(miner: MinerCapabilities, now: number, leaseTtlMs: number): Promise<Assignment | null> {
    return (await claimJobs(this.db, miner, now, leaseTtlMs, 1))[0] ?? null;
  }
  claimJobs(miner: MinerCapabilities, now: number, leaseTtlMs: number, max: number): Promise<Assignment[]> {
    return claimJobs(this.db, miner, now, leaseTtlMs, max);
  }
  markRunning(ref: LeaseRef, now: number, leaseTtlMs: number): Promise<boolean> {
    return markRunning(this.db, ref, now, leaseTtlMs);
  }
  renewLease(ref: LeaseRef, now: number, leaseTtlMs: number, progress?: number): Promise<{ renewed: boolean; cancelRequested: boolean }> {
    return renewLease(this.db, ref, now, leaseTtlMs, progress);
  }
  commitResult(ref: LeaseRef, result: StoredResult, now: number): Promise<CommitOutcome> {
    return commitResult(this.db, ref, result, now);
  }
  failAttempt(ref: LeaseRef, failure: { code: string; message: string; retryable: boolean }, now: number, requeueBackoffMs: number): Promise<FailOutcome> {
    return failAttempt(this.db, ref, failure, now, requeueBackoffMs);
  }
  releaseLease(ref: LeaseRef, now: number, reason = "released"): Promise<"requeued" | "cancelled" | "stale"> {
    return releaseLease(this.db, ref, now, reason);
  }
  listLeasedBy(minerId: string): Promise<JobRecord[]> {
    return listLeasedBy(this.db, minerId);
  }
  reapExpiredLeases(now: number, requeueBackoffMs: number): Promise<ReapedJob[]> {
    return reapExpiredLeases(this.db, now, requeueBackoffMs);
  }
  expireQueued(now: number, queueTtlMs: number): Promise<ReapedJob[]> {
    return expireQueued(this.db, now, queueTtlMs);
  }
  timeOutRunning(now: number): Promise<ReapedJob[]> {
    return timeOutRunning(this.db, now);
  }

  openMinerSession(m: MinerSessionOpening, now: number, liveSince: number): Promise<MinerSessionOpened> {
    return openMinerSession(this.db, m, now, liveSince);
  }
  touchMiners(replica: string, sessions: MinerTouch[], now: number): Promise<void> {
    return touchMiners(this.db, replica, sessions, now);
  }
  closeMinerSession(id: string, epoch: number, now: number): Promise<void> {
    return closeMinerSession(this.db, id, epoch, now);
  }
  listConnectedMiners(seenSince: number): Promise<MinerRecord[]> {
    return listConnectedMiners(this.db, seenSince);
  }

  listMiners(seenSince: number): Promise<MinerRecord[]> {
    return operator.listMiners(this.db, seenSince);
  }
  getMiner(id: string): Promise<MinerRecord | null> {
    return operator.getMiner(this.db, id);
  }
  getMinersById(ids: readonly string[]): Promise<MinerRecord[]> {
    return operator.getMinersById(this.db, ids);
  }
  setMinerDrained(id: string, drained: boolean, _now: number): Promise<boolean> {
    return operator.setMinerDrained(this.db, id, drained);
  }
  drainedAmong(ids: readonly string[]): Promise<string[]> {
    return operator.drainedAmong(this.db, ids);
  }
  listAllJobs(q: AdminJobQuery): Promise<Page<JobRecord>> {
    return operator.listAllJobs(this.db, q);
  }
  listActiveLeases(limit: number): Promise<JobRecord[]> {
    return operator.listActiveLeases(this.db, limit);
  }
  queueDepth(): Promise<QueueDepth[]> {
    return operator.queueDepth(this.db);
  }
  throughput(since: number, bucketMs: number): Promise<ThroughputBucket[]> {
    return operator.throughput(this.db, since, bucketMs);
  }
  recentFailures(since: number, limit: number): Promise<JobRecord[]> {
    return operator.recentFailures(this.db, since, limit);
  }

  createKey(kind: KeyKind, name: string, tenant: string, now: number): Promise<{ record: ApiKeyRecord; key: string }> {
    return createKey(this.db, kind, name, tenant, now);
  }
  authenticate(rawKey: string, kind: KeyKind): Promise<ApiKeyRecord | null> {
    return authenticate(this.db, rawKey, kind);
  }
  listKeys(): Promise<ApiKeyRecord[]> {
    return listKeys(this.db);
  }
  getKey(id: string): Promise<{ record: ApiKeyRecord; secretHash: Buffer } | null> {
    return getKey(this.db, id);
  }
  revokeKey(id: string, now: number): Promise<boolean> {
    return revokeKey(this.db, id, now);
  }
  revokedAmong(ids: readonly string[]): Promise<string[]> {
    return revokedAmong(this.db, ids);
  }

  close(): Promise<void> {
    clearTimeout(this.retryTimer);
    return this.db.close();
  }
}
