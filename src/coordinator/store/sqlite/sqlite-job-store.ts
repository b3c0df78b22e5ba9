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
import * as client from "./client-verbs.js";
import * as keys from "./key-verbs.js";
import * as leases from "./lease-verbs.js";
import * as miners from "./miner-verbs.js";
import * as operator from "./operator-verbs.js";
import { SqliteDb } from "./sqlite-db.js";
import * as storage from "./storage-verbs.js";

/**
 * The embedded job store: one SQLite file (better-sqlite3), WAL with `synchronous=FULL`, so a
 * job is on disk before POST /v1/jobs answers. The verbs live in small modules by what they act
 * on (client-verbs, lease-verbs, storage-verbs, key-verbs) over one SqliteDb; the rules they
 * follow are the backend-neutral ones in ../transitions.ts. Storage faults (busy, full,
 * read-only) are UnavailableError (503 + Retry-After).
 */
export class SqliteJobStore implements JobStore {
  private readonly db: SqliteDb;

  constructor(
    file: string,
    readonly events: JobEvents = new JobEvents(),
  ) {
    this.db = new SqliteDb(file, events);
  }

  createJob(job: NewJob, now: number): Promise<{ job: JobRecord; created: boolean }> {
    return client.createJob(this.db, job, now);
  }
  getJob(tenant: string, jobId: string): Promise<JobRecord | null> {
    return settle(() => client.getJob(this.db, tenant, jobId));
  }
  readVersion(): number {
    return this.db.readGeneration();
  }
  getJobById(jobId: string): Promise<JobRecord | null> {
    return settle(() => client.getJob(this.db, null, jobId));
  }
  getJobsById(jobIds: readonly string[]): Promise<JobRecord[]> {
    return settle(() => client.getJobsById(this.db, jobIds));
  }
  listJobs(tenant: string, q: { status?: JobState; limit: number; cursor?: string }): Promise<Page<JobRecord>> {
    return settle(() => client.listJobs(this.db, tenant, q));
  }
  listHistory(tenant: string, q: { from: number; to: number; limit: number; cursor?: string }): Promise<Page<JobRecord>> {
    return settle(() => client.listHistory(this.db, tenant, q));
  }
  requestCancel(tenant: string, jobId: string, now: number): Promise<CancelOutcome | null> {
    return settle(() => client.requestCancel(this.db, tenant, jobId, now));
  }
  countQueued(filter: { tenant?: string; model?: string }): Promise<number> {
    return settle(() => client.countQueued(this.db, filter));
  }
  countByState(): Promise<Partial<Record<JobState, number>>> {
    return settle(() => client.countByState(this.db));
  }
  queuePosition(job: JobRecord): Promise<number> {
    return settle(() => client.queuePosition(this.db, job));
  }
  listEvents(jobId: string, afterSeq: number): Promise<JobEvent[]> {
    return settle(() => client.listEvents(this.db, jobId, afterSeq));
  }
  jobWithEvents(jobId: string, afterSeq: number): Promise<{ job: JobRecord | null; events: JobEvent[] }> {
    return settle(() => client.jobWithEvents(this.db, jobId, afterSeq));
  }

  createFile(tenant: string, content: string, upload: { sha256: string; bytes: number }, now: number): Promise<FileRecord> {
    return settle(() => storage.createFile(this.db, tenant, content, upload, now));
  }
  getFile(tenant: string, fileId: string): Promise<FileRecord | null> {
    return settle(() => storage.getFile(this.db, tenant, fileId));
  }
  deleteFile(tenant: string, fileId: string): Promise<boolean> {
    return settle(() => storage.deleteFile(this.db, tenant, fileId));
  }
  usage(tenant: string): Promise<TenantUsage> {
    return settle(() => storage.usage(this.db, tenant));
  }
  submitCounts(tenant: string, model: string): Promise<SubmitCounts> {
    return settle(() => client.submitCounts(this.db, tenant, model));
  }
  removeResult(tenant: string, jobId: string, reason: "deleted", now: number): Promise<{ location: string } | null> {
    return settle(() => storage.removeResult(this.db, tenant, jobId, reason, now));
  }
  expireResults(before: number, now: number, limit: number): Promise<{ jobId: string; location: string }[]> {
    return settle(() => storage.expireResults(this.db, before, now, limit));
  }
  expireFiles(before: number, limit: number): Promise<number> {
    return settle(() => storage.expireFiles(this.db, before, limit));
  }
  recordUpload(jobId: string, outcome: { uri: string; attempts: number } | { error: { code: string; message: string }; attempts: number }, now: number): Promise<boolean> {
    return settle(() => storage.recordUpload(this.db, jobId, outcome, now));
  }
  listPendingUploads(limit: number): Promise<JobRecord[]> {
    return settle(() => storage.listPendingUploads(this.db, limit));
  }

  /** One process: every pending upload is this one's. */
  claimPendingUploads(_now: number, _claimMs: number, limit: number): Promise<JobRecord[]> {
    return this.listPendingUploads(limit);
  }
  /** One process, one writer: nothing to exclude. */
  runExclusive<T>(_name: string, fn: () => Promise<T>): Promise<T | undefined> {
    return fn();
  }

  claimNextJob(miner: MinerCapabilities, now: number, leaseTtlMs: number): Promise<Assignment | null> {
    return settle(() => leases.claimJobs(this.db, miner, now, leaseTtlMs, 1)[0] ?? null);
  }
  claimJobs(miner: MinerCapabilities, now: number, leaseTtlMs: number, max: number): Promise<Assignment[]> {
    return settle(() => leases.claimJobs(this.db, miner, now, leaseTtlMs, max));
  }
  markRunning(ref: LeaseRef, now: number, leaseTtlMs: number): Promise<boolean> {
    return settle(() => leases.markRunning(this.db, ref, now, leaseTtlMs));
  }
  renewLease(ref: LeaseRef, now: number, leaseTtlMs: number, progress?: number): Promise<{ renewed: boolean; cancelRequested: boolean }> {
    return settle(() => leases.renewLease(this.db, ref, now, leaseTtlMs, progress));
  }
  commitResult(ref: LeaseRef, result: StoredResult, now: number): Promise<CommitOutcome> {
    return settle(() => leases.commitResult(this.db, ref, result, now));
  }
  failAttempt(ref: LeaseRef, failure: { code: string; message: string; retryable: boolean }, now: number, requeueBackoffMs: number): Promise<FailOutcome> {
    return settle(() => leases.failAttempt(this.db, ref, failure, now, requeueBackoffMs));
  }
  releaseLease(ref: LeaseRef, now: number, reason = "released"): Promise<"requeued" | "cancelled" | "stale"> {
    return settle(() => leases.releaseLease(this.db, ref, now, reason));
  }
  listLeasedBy(minerId: string): Promise<JobRecord[]> {
    return settle(() => leases.listLeasedBy(this.db, minerId));
  }
  reapExpiredLeases(now: number, requeueBackoffMs: number): Promise<ReapedJob[]> {
    return settle(() => leases.reapExpiredLeases(this.db, now, requeueBackoffMs));
  }
  expireQueued(now: number, queueTtlMs: number): Promise<ReapedJob[]> {
    return settle(() => leases.expireQueued(this.db, now, queueTtlMs));
  }
  timeOutRunning(now: number): Promise<ReapedJob[]> {
    return settle(() => leases.timeOutRunning(this.db, now));
  }

  openMinerSession(m: MinerSessionOpening, now: number, liveSince: number): Promise<MinerSessionOpened> {
    return settle(() => miners.openMinerSession(this.db, m, now, liveSince));
  }
  touchMiners(replica: string, sessions: MinerTouch[], now: number): Promise<void> {
    return settle(() => miners.touchMiners(this.db, replica, sessions, now));
  }
  closeMinerSession(id: string, epoch: number, now: number): Promise<void> {
    return settle(() => miners.closeMinerSession(this.db, id, epoch, now));
  }
  listConnectedMiners(seenSince: number): Promise<MinerRecord[]> {
    return settle(() => miners.listConnectedMiners(this.db, seenSince));
  }

  listMiners(seenSince: number): Promise<MinerRecord[]> {
    return settle(() => operator.listMiners(this.db, seenSince));
  }
  getMiner(id: string): Promise<MinerRecord | null> {
    return settle(() => operator.getMiner(this.db, id));
  }
  getMinersById(ids: readonly string[]): Promise<MinerRecord[]> {
    return settle(() => operator.getMinersById(this.db, ids));
  }
  setMinerDrained(id: string, drained: boolean, _now: number): Promise<boolean> {
    return settle(() => operator.setMinerDrained(this.db, id, drained));
  }
  drainedAmong(ids: readonly string[]): Promise<string[]> {
    return settle(() => operator.drainedAmong(this.db, ids));
  }
  listAllJobs(q: AdminJobQuery): Promise<Page<JobRecord>> {
    return settle(() => operator.listAllJobs(this.db, q));
  }
  listActiveLeases(limit: number): Promise<JobRecord[]> {
    return settle(() => operator.listActiveLeases(this.db, limit));
  }
  queueDepth(): Promise<QueueDepth[]> {
    return settle(() => operator.queueDepth(this.db));
  }
  throughput(since: number, bucketMs: number): Promise<ThroughputBucket[]> {
    return settle(() => operator.throughput(this.db, since, bucketMs));
  }
  recentFailures(since: number, limit: number): Promise<JobRecord[]> {
    return settle(() => operator.recentFailures(this.db, since, limit));
  }

  createKey(kind: KeyKind, name: string, tenant: string, now: number): Promise<{ record: ApiKeyRecord; key: string }> {
    return settle(() => keys.createKey(this.db, kind, name, tenant, now));
  }
  authenticate(rawKey: string, kind: KeyKind): Promise<ApiKeyRecord | null> {
    return settle(() => keys.authenticate(this.db, rawKey, kind));
  }
  listKeys(): Promise<ApiKeyRecord[]> {
    return settle(() => keys.listKeys(this.db));
  }
  getKey(id: string): Promise<{ record: ApiKeyRecord; secretHash: Buffer } | null> {
    return settle(() => keys.getKey(this.db, id));
  }
  revokeKey(id: string, now: number): Promise<boolean> {
    return settle(() => keys.revokeKey(this.db, id, now));
  }
  revokedAmong(ids: readonly string[]): Promise<string[]> {
    return settle(() => keys.revokedAmong(this.db, ids));
  }

  close(): Promise<void> {
    this.db.close();
    return Promise.resolve();
  }
}

/**
 * The verbs run synchronously (better-sqlite3) but promise a result: a throw must become a
 * rejected promise, not escape before the caller has a promise to catch on.
 */
function settle<T>(fn: () => T): Promise<T> {
  try {
    return Promise.resolve(fn());
  } catch (err) {
    return Promise.reject(err instanceof Error ? err : new Error(String(err)));
  }
}
