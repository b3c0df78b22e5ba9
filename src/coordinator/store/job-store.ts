import type { ResolvedGenerationParameters } from "../../protocol/generation.js";
import type { GpuInfo, GpuLoad } from "../../protocol/frames.js";
import type { Requirements } from "../../protocol/jobs.js";
import type { JobState, Priority } from "../../protocol/version.js";
import type { KeyKind } from "../auth/api-key.js";

/**
 * The job store: every durable fact of the coordinator behind domain verbs. SQLite is the
 * embedded default; a PostgreSQL store implements the same interface and passes the same
 * contract suite (test/coordinator/job-store-contract.ts).
 *
 * Lifecycle (DESIGN.md §3):
 *
 *   queued ──claimNextJob──▶ assigned ──markRunning──▶ running ──commitResult──▶ completed
 *     │  ▲                     │                         │
 *     │  └── lease expired / retryable fail / released ──┘ (attempt budget left)
 *     │                        └── budget spent ─▶ failed
 *     ├── requestCancel ─▶ cancelled        (assigned/running: cancel_requested, then cancelled
 *     └── queue TTL ─▶ expired               when the miner acknowledges or the lease expires)
 *                              running past timeout_seconds ─▶ timed_out
 *
 * Every verb is atomic. `attempt` is the fencing counter: bumped on each claim, never reused;
 * a (job, attempt, lease_token) triple is what every miner-side verb must match. `failures`
 * counts lost leases and retryable failures against `max_attempts`; a miner handing a job back
 * (`releaseLease`) does not burn the budget. Each state change appends a row to the job's event
 * log in the same transaction.
 */
export interface JobRecord {
  id: string;
  tenant: string;
  model: string;
  input: string;
  inputFileId: string | null;
  outputFormat: "json" | "text";
  destination: string;
  requirements: Requirements;
  priority: Priority;
  timeoutSeconds: number;
  parameters: ResolvedGenerationParameters;
  status: JobState;
  /** 0–100. */
  progress: number;
  minerId: string | null;
  attempt: number;
  failures: number;
  maxAttempts: number;
  leaseToken: string | null;
  leaseExpiresAt: number | null;
  cancelRequested: boolean;
  createdAt: number;
  assignedAt: number | null;
  /** When the first attempt started running. */
  startedAt: number | null;
  /** When the current attempt started running (timeouts count from here). */
  attemptStartedAt: number | null;
  completedAt: number | null;
  /** Earliest time a requeued job may be assigned again. */
  notBefore: number;
  result: StoredResult | null;
  error: { code: string; message: string } | null;
  estimatedCost: number;
  estimatedTimeSeconds: number;
  /** The failed job an operator retried as this one (terminal jobs never change: a retry is a new job). */
  retryOf: string | null;
}

export interface StoredResult {
  sha256: string;
  bytes: number;
  /** Path of the output under the result store. */
  location: string;
  finishReason: string;
  usage: { prompt_tokens: number; completion_tokens: number };
  tokensPerSecond: number;
  attempt: number;
  /** Delivery to an s3:// destination; absent until the first upload outcome is recorded. */
  upload?: UploadRecord;
  /** Set once the stored output is gone: deleted by its owner, or expired by the retention sweep. */
  removed?: { reason: "deleted" | "expired"; at: number };
}

/** Outcome of delivering a result to its s3:// destination (the local copy always stays). */
export interface UploadRecord {
  state: "uploaded" | "failed";
  /** s3://bucket/key of the object, once uploaded. */
  uri?: string;
  /** Why the last round of tries failed. */
  error?: { code: string; message: string };
  /** Tries in the round that was recorded. */
  attempts: number;
  at: number;
}

export interface NewJob {
  tenant: string;
  model: string;
  input: string;
  inputFileId: string | null;
  outputFormat: "json" | "text";
  destination: string;
  requirements: Requirements;
  priority: Priority;
  timeoutSeconds: number;
  parameters: ResolvedGenerationParameters;
  maxAttempts: number;
  estimatedCost: number;
  estimatedTimeSeconds: number;
  /** Idempotency-Key header and a hash of the request it came with. */
  idempotency?: { key: string; requestHash: string };
  /** An operator's retry of this job (see JobRecord.retryOf). */
  retryOf?: string;
}

export interface LeaseRef {
  jobId: string;
  attempt: number;
  leaseToken: string;
  /**
   * The miner presenting the lease. When given, the lease counts only if it was granted to
   * this miner: a token that leaked to another miner is as good as a wrong one. The gateway
   * always gives it; the coordinator's own verbs (the scheduler handing a lease back) need not.
   */
  minerId?: string;
}

export interface MinerCapabilities {
  minerId: string;
  gpus: readonly GpuInfo[];
  models: readonly string[];
}

export interface Assignment {
  job: JobRecord;
  attempt: number;
  leaseToken: string;
  leaseExpiresAt: number;
}

export type CommitOutcome = "committed" | "duplicate" | "stale";

export type FailOutcome = "requeued" | "failed" | "cancelled" | "timed_out" | "stale";

export interface JobEvent {
  jobId: string;
  seq: number;
  type: string;
  data: Record<string, unknown>;
  at: number;
  /**
   * Where the job's result goes ("" or s3://…), when the writer publishing the event in its own
   * process knows it (PostgreSQL's one-statement result commit does); never stored nor in the log. Lets the
   * S3 uploader pass over a completion without reading the job.
   */
  destination?: string;
}

export interface Page<T> {
  items: T[];
  total: number;
  nextCursor: string | null;
}

export interface ApiKeyRecord {
  id: string;
  kind: KeyKind;
  name: string;
  tenant: string;
  createdAt: number;
  revokedAt: number | null;
}

export interface FileRecord {
  id: string;
  tenant: string;
  /** Size and SHA-256 of the file as it was uploaded (a leading BOM included); `content` is its text without the BOM. */
  bytes: number;
  sha256: string;
  createdAt: number;
  content: string;
}

/** Bytes a tenant keeps stored, for its quotas. */
export interface TenantUsage {
  fileBytes: number;
  resultBytes: number;
}

export interface SubmitCounts {
  usage: TenantUsage;
  queuedForTenant: number;
  queuedForModel: number;
}

/** A miner as the whole fleet sees it (the miners table). */
/** What a hello asks the store to record (see openMinerSession). */
export interface MinerSessionOpening {
  id: string;
  keyId: string;
  name: string;
  replica: string;
  /** hello.instance_id; null for a protocol 4 miner. */
  instanceId: string | null;
  gpus: GpuInfo[];
  models: string[];
  slots: number;
}

export type MinerSessionOpened =
  | { opened: true; epoch: number }
  | { opened: false; holder: { instanceId: string; replica: string | null; lastSeenAt: number | null } };

export interface MinerRecord {
  id: string;
  keyId: string;
  name: string;
  /** The replica holding its session, while connected. */
  replica: string | null;
  /** Sessions it has had: a newer session fences an older one out. */
  epoch: number;
  connected: boolean;
  connectedAt: number | null;
  /** Last refreshed by the replica holding it (every heartbeat). */
  lastSeenAt: number | null;
  gpus: GpuInfo[];
  models: string[];
  slots: number;
  /** The miner itself is draining (it said so, or its session stopped pulling). */
  draining: boolean;
  /** An operator drained it: no new jobs, kept across reconnects and replicas until undrained. */
  drained: boolean;
  /** Attempts it finished with a result, and attempts that failed on it (failures, lost leases, timeouts). */
  jobsDone: number;
  jobsFailed: number;
  /** Its latest failed attempt. */
  lastError: { code: string; message: string; at: number } | null;
  /** Decode speed of its latest result. */
  tokensPerSecond: number | null;
  /** Its GPUs' utilisation and free VRAM as its latest heartbeats said (protocol 5); null when never reported this session. */
  gpuLoad: GpuLoad[] | null;
}

/** What an operator filters every tenant's jobs by (GET /v1/admin/jobs); times are created_at bounds. */
export interface AdminJobQuery {
  status?: JobState;
  model?: string;
  tenant?: string;
  minerId?: string;
  from?: number;
  to?: number;
  limit: number;
  cursor?: string;
}

export interface QueueDepth {
  model: string;
  priority: Priority;
  count: number;
}

/** Completions in one fixed time bucket: jobs and generated tokens. */
export interface ThroughputBucket {
  start: number;
  jobs: number;
  tokens: number;
}

/** A live session as its replica refreshes it each heartbeat; `gpuLoad` when the miner reported it (else kept). */
export interface MinerTouch {
  id: string;
  epoch: number;
  draining: boolean;
  gpuLoad?: GpuLoad[];
}

/** What one reaper pass did, for logs, metrics and telling miners to stop. */
export interface ReapedJob {
  jobId: string;
  attempt: number;
  minerId: string | null;
  outcome: "requeued" | "failed" | "cancelled" | "timed_out" | "expired";
}

export type CancelOutcome =
  | { outcome: "cancelled"; job: JobRecord }
  | { outcome: "cancel_requested"; job: JobRecord }
  | { outcome: "conflict"; job: JobRecord };

export interface JobStore {
  // --- client side
  /** Commits a new job; with an idempotency key already used for the same request, returns that job (created: false). */
  createJob(job: NewJob, now: number): Promise<{ job: JobRecord; created: boolean }>;
  /** The tenant's job, or null (also for another tenant's). */
  getJob(tenant: string, jobId: string): Promise<JobRecord | null>;
  listJobs(tenant: string, q: { status?: JobState; limit: number; cursor?: string }): Promise<Page<JobRecord>>;
  /** Finished jobs whose completion time is in [from, to]. */
  listHistory(tenant: string, q: { from: number; to: number; limit: number; cursor?: string }): Promise<Page<JobRecord>>;
  requestCancel(tenant: string, jobId: string, now: number): Promise<CancelOutcome | null>;
  countQueued(filter: { tenant?: string; model?: string }): Promise<number>;
  /** Jobs of all tenants by state (for metrics). */
  countByState(): Promise<Partial<Record<JobState, number>>>;
  /** Queued jobs created before this one that would be picked first (same or higher priority). */
  queuePosition(job: JobRecord): Promise<number>;
  /**
   * A number that changes whenever a read of this store may answer differently (a write by this
   * process at once, another process's commit from the next event-loop turn on), for a caller
   * that keeps copies of answers; undefined when the store cannot tell without a query
   * (PostgreSQL: other replicas write).
   */
  readVersion(): number | undefined;
  /** Stores an uploaded file's text; `upload` describes the bytes as they were uploaded. */
  createFile(tenant: string, content: string, upload: { sha256: string; bytes: number }, now: number): Promise<FileRecord>;
  getFile(tenant: string, fileId: string): Promise<FileRecord | null>;
  /** Deletes the tenant's file; false when there is none. Jobs that used it keep their own copy of the prompt. */
  deleteFile(tenant: string, fileId: string): Promise<boolean>;
  usage(tenant: string): Promise<TenantUsage>;
  /**
   * What a submit checks and estimates with, in one read: the tenant's stored bytes (usage), its
   * queued jobs (countQueued({tenant})) and the model's (countQueued({model})).
   */
  submitCounts(tenant: string, model: string): Promise<SubmitCounts>;
  /**
   * Marks a completed job's stored output removed (the record stays) and returns where the
   * output was, for the caller to delete after this commit; null when there is nothing to remove
   * (not completed, or already removed). Another tenant's job is null too.
   */
  removeResult(tenant: string, jobId: string, reason: "deleted", now: number): Promise<{ location: string } | null>;
  /** Retention: outputs of jobs completed before `before`, marked removed ("expired"); returns their locations (at most `limit`). */
  expireResults(before: number, now: number, limit: number): Promise<{ jobId: string; location: string }[]>;
  /** Retention: deletes files uploaded before `before` (at most `limit`); returns how many. */
  expireFiles(before: number, limit: number): Promise<number>;
  listEvents(jobId: string, afterSeq: number): Promise<JobEvent[]>;
  /**
   * A job (any tenant's; null when there is none, with no events) and its events after
   * `afterSeq`, read together: what a job's event stream opens with and re-reads on a hint of
   * another replica's change — one round trip on PostgreSQL (one statement, so the row and the
   * events are of one moment), where getJobById then listEvents were two.
   */
  jobWithEvents(jobId: string, afterSeq: number): Promise<{ job: JobRecord | null; events: JobEvent[] }>;

  // --- miner side (fenced by the lease triple)
  getJobById(jobId: string): Promise<JobRecord | null>;
  /** The jobs among `jobIds` that exist, any tenant's, in no particular order (one read for many). */
  getJobsById(jobIds: readonly string[]): Promise<JobRecord[]>;
  /** Leases the best queued job this miner can run (priority, then age), or null. */
  claimNextJob(miner: MinerCapabilities, now: number, leaseTtlMs: number): Promise<Assignment | null>;
  /**
   * Leases up to `max` of the best queued jobs this miner can run, best first, in one
   * transaction (a miner with free slots fills them in one claim, not one claim per slot); [] when
   * none is queued or `max` < 1. Two claims at once never get the same job.
   */
  claimJobs(miner: MinerCapabilities, now: number, leaseTtlMs: number, max: number): Promise<Assignment[]>;
  markRunning(ref: LeaseRef, now: number, leaseTtlMs: number): Promise<boolean>;
  /** Extends the lease (and records progress) only if the triple still holds it. */
  renewLease(
    ref: LeaseRef,
    now: number,
    leaseTtlMs: number,
    progress?: number,
  ): Promise<{ renewed: boolean; cancelRequested: boolean }>;
  /** Compare-and-set on (job, attempt, token); a cancel-requested job ends cancelled instead ("stale": the result is not kept). */
  commitResult(ref: LeaseRef, result: StoredResult, now: number): Promise<CommitOutcome>;
  failAttempt(
    ref: LeaseRef,
    failure: { code: string; message: string; retryable: boolean },
    now: number,
    requeueBackoffMs: number,
  ): Promise<FailOutcome>;
  /**
   * The job is handed back unfinished (the miner drains, or its key was revoked): requeued at
   * once without burning the attempt budget; `reason` goes into the requeued event (default "released").
   */
  releaseLease(ref: LeaseRef, now: number, reason?: string): Promise<"requeued" | "cancelled" | "stale">;
  /** Expired leases: cancel-requested → cancelled; else requeued (backoff) or failed when the budget is spent. */
  reapExpiredLeases(now: number, requeueBackoffMs: number): Promise<ReapedJob[]>;
  expireQueued(now: number, queueTtlMs: number): Promise<ReapedJob[]>;
  /** Running attempts past their job's timeout_seconds → timed_out. */
  timeOutRunning(now: number): Promise<ReapedJob[]>;
  /**
   * Records an s3 upload outcome in the completed job's result and appends an `uploaded` or
   * `upload_failed` event. False when the job is not completed (nothing recorded).
   */
  recordUpload(jobId: string, outcome: { uri: string; attempts: number } | { error: { code: string; message: string }; attempts: number }, now: number): Promise<boolean>;
  /** Completed jobs of all tenants with an s3:// destination whose result is not uploaded yet, oldest first. */
  listPendingUploads(limit: number): Promise<JobRecord[]>;
  /** Pending uploads claimed for this replica until now + claimMs (replicas re-driving at once take different ones). */
  claimPendingUploads(now: number, claimMs: number, limit: number): Promise<JobRecord[]>;
  /**
   * Runs housekeeping that is not per row (sweeps) on one replica at a time: fn runs when this
   * replica gets the named lock, and undefined is returned (fn not run) while another holds it.
   */
  runExclusive<T>(name: string, fn: () => Promise<T>): Promise<T | undefined>;
  /** Jobs this miner holds a lease on (assigned or running). */
  listLeasedBy(minerId: string): Promise<JobRecord[]>;

  // --- the fleet (every replica's miners)
  /**
   * A miner's session opened on `replica`: its row written with the instance id, its epoch
   * bumped; returns the new epoch. Refused, with nothing written, while another instance holds
   * the miner (one key and name): its row is connected, seen at or after `liveSince`, and has a
   * different instance id; then the holder is returned. A null instance id (a protocol 4 miner,
   * which cannot tell) on either side replaces the session, as a reconnect does.
   */
  openMinerSession(m: MinerSessionOpening, now: number, liveSince: number): Promise<MinerSessionOpened>;
  /** The replica's live sessions were seen now (one statement per replica heartbeat); a session fenced out by a newer epoch is not touched. */
  touchMiners(replica: string, sessions: MinerTouch[], now: number): Promise<void>;
  /** That session ended; a newer session of the miner (another epoch) is left as it is. */
  closeMinerSession(id: string, epoch: number, now: number): Promise<void>;
  /** Miners connected and seen since `seenSince`. */
  listConnectedMiners(seenSince: number): Promise<MinerRecord[]>;
  /** Every miner connected now or seen since `seenSince`, connected first. */
  listMiners(seenSince: number): Promise<MinerRecord[]>;
  getMiner(id: string): Promise<MinerRecord | null>;
  /** The miners among `ids` that are known, in no particular order (one read for many). */
  getMinersById(ids: readonly string[]): Promise<MinerRecord[]>;
  /** An operator's drain (true) or undrain; false when no such miner. With replicas, the one holding it is told. */
  setMinerDrained(id: string, drained: boolean, now: number): Promise<boolean>;
  /** Which of these miners an operator has drained (each replica re-reads its sessions' drains every heartbeat). */
  drainedAmong(ids: readonly string[]): Promise<string[]>;

  // --- operators (every tenant)
  /** Jobs of every tenant, newest first, filtered. */
  listAllJobs(q: AdminJobQuery): Promise<Page<JobRecord>>;
  /** Assigned and running jobs of the whole fleet (at most `limit`). */
  listActiveLeases(limit: number): Promise<JobRecord[]>;
  queueDepth(): Promise<QueueDepth[]>;
  /** Completions since `since` in buckets of `bucketMs` (only buckets with completions). */
  throughput(since: number, bucketMs: number): Promise<ThroughputBucket[]>;
  /** Jobs that ended failed or timed_out since `since`, latest first. */
  recentFailures(since: number, limit: number): Promise<JobRecord[]>;

  // --- keys
  createKey(kind: KeyKind, name: string, tenant: string, now: number): Promise<{ record: ApiKeyRecord; key: string }>;
  /** The key's record when it is valid, of that kind, and not revoked; else null. */
  authenticate(rawKey: string, kind: KeyKind): Promise<ApiKeyRecord | null>;
  /** A key by id with its stored secret hash (operator sessions are signed with it), or null. */
  getKey(id: string): Promise<{ record: ApiKeyRecord; secretHash: Buffer } | null>;
  listKeys(): Promise<ApiKeyRecord[]>;
  revokeKey(id: string, now: number): Promise<boolean>;
  /** Which of these key ids are revoked (for connections opened before the revocation). */
  revokedAmong(ids: readonly string[]): Promise<string[]>;

  close(): Promise<void>;
}
