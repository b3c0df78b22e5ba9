import type { JobState, Priority } from "../../protocol/version.js";
import type { ApiKeyRecord, FileRecord, JobEvent, JobRecord, MinerRecord, NewJob, StoredResult } from "./job-store.js";

/**
 * The tables as both SQL backends lay them out (snake_case columns, times in epoch ms), and the
 * mapping to the domain records. SQLite hands JSON columns over as text and booleans as 0/1;
 * PostgreSQL as parsed jsonb and booleans: the mapping takes either.
 */
export interface JobRow {
  id: string;
  tenant: string;
  seq: number;
  model: string;
  input: string;
  input_file_id: string | null;
  output_format: string;
  destination: string;
  requirements: unknown;
  priority: string;
  priority_rank: number;
  timeout_seconds: number;
  parameters: unknown;
  status: string;
  progress: number;
  miner_id: string | null;
  attempt: number;
  failures: number;
  max_attempts: number;
  lease_token: string | null;
  lease_expires_at: number | null;
  cancel_requested: number | boolean;
  created_at: number;
  assigned_at: number | null;
  started_at: number | null;
  attempt_started_at: number | null;
  completed_at: number | null;
  not_before: number;
  result: unknown;
  error_code: string | null;
  error_message: string | null;
  estimated_cost: number;
  estimated_time_seconds: number;
  idempotency_key: string | null;
  request_hash: string | null;
  retry_of: string | null;
}

export interface KeyRow {
  id: string;
  kind: string;
  name: string;
  tenant: string;
  secret_hash: Buffer;
  created_at: number;
  revoked_at: number | null;
}

export interface FileRow {
  id: string;
  tenant: string;
  bytes: number;
  sha256: string;
  created_at: number;
  content: string;
}

export interface EventRow {
  job_id: string;
  seq: number;
  type: string;
  data: unknown;
  at: number;
}

export interface MinerRow {
  id: string;
  key_id: string;
  name: string;
  replica: string | null;
  epoch: number;
  connected: number | boolean;
  connected_at: number | null;
  last_seen_at: number | null;
  gpus: unknown;
  models: unknown;
  slots: number;
  free_slots: number;
  draining: number | boolean;
  drained: number | boolean;
  jobs_done: number;
  jobs_failed: number;
  last_error: unknown;
  tokens_per_s: number | null;
  gpu_load?: unknown;
}

export const PRIORITY_RANK: Record<Priority, number> = { low: 0, normal: 1, high: 2 };

/**
 * A new job's values, in the order both backends insert them: id, tenant, model, input,
 * input_file_id, output_format, destination, requirements, priority, priority_rank,
 * timeout_seconds, parameters, max_attempts, created_at, estimated_cost,
 * estimated_time_seconds, idempotency_key, request_hash, retry_of.
 */
export function newJobValues(job: NewJob, id: string, now: number): unknown[] {
  return [
    id,
    job.tenant,
    job.model,
    job.input,
    job.inputFileId,
    job.outputFormat,
    job.destination,
    JSON.stringify(job.requirements),
    job.priority,
    PRIORITY_RANK[job.priority],
    job.timeoutSeconds,
    JSON.stringify(job.parameters),
    job.maxAttempts,
    now,
    job.estimatedCost,
    job.estimatedTimeSeconds,
    job.idempotency?.key ?? null,
    job.idempotency?.requestHash ?? null,
    job.retryOf ?? null,
  ];
}

/** A JSON column: text (SQLite) or already parsed (PostgreSQL jsonb). */
export function jsonColumn<T>(v: unknown): T {
  return (typeof v === "string" ? JSON.parse(v) : v) as T;
}

export function storedResult(r: Pick<JobRow, "result">): StoredResult | null {
  return r.result === null || r.result === undefined ? null : jsonColumn<StoredResult>(r.result);
}

export function toJob(r: JobRow): JobRecord {
  return {
    id: r.id,
    tenant: r.tenant,
    model: r.model,
    input: r.input,
    inputFileId: r.input_file_id,
    outputFormat: r.output_format as JobRecord["outputFormat"],
    destination: r.destination,
    requirements: jsonColumn<JobRecord["requirements"]>(r.requirements),
    priority: r.priority as Priority,
    timeoutSeconds: r.timeout_seconds,
    parameters: jsonColumn<JobRecord["parameters"]>(r.parameters),
    status: r.status as JobState,
    progress: r.progress,
    minerId: r.miner_id,
    attempt: r.attempt,
    failures: r.failures,
    maxAttempts: r.max_attempts,
    leaseToken: r.lease_token,
    leaseExpiresAt: r.lease_expires_at,
    cancelRequested: r.cancel_requested === 1 || r.cancel_requested === true,
    createdAt: r.created_at,
    assignedAt: r.assigned_at,
    startedAt: r.started_at,
    attemptStartedAt: r.attempt_started_at,
    completedAt: r.completed_at,
    notBefore: r.not_before,
    result: storedResult(r),
    error: r.error_code === null ? null : { code: r.error_code, message: r.error_message ?? "" },
    estimatedCost: r.estimated_cost,
    estimatedTimeSeconds: r.estimated_time_seconds,
    retryOf: r.retry_of ?? null,
  };
}

export function toKey(r: KeyRow): ApiKeyRecord {
  return { id: r.id, kind: r.kind as ApiKeyRecord["kind"], name: r.name, tenant: r.tenant, createdAt: r.created_at, revokedAt: r.revoked_at };
}

export function toFile(r: FileRow): FileRecord {
  return { id: r.id, tenant: r.tenant, bytes: r.bytes, sha256: r.sha256, createdAt: r.created_at, content: r.content };
}

export function toEvent(r: EventRow): JobEvent {
  return { jobId: r.job_id, seq: r.seq, type: r.type, data: jsonColumn<Record<string, unknown>>(r.data), at: r.at };
}

export function toMiner(r: MinerRow): MinerRecord {
  return {
    id: r.id,
    keyId: r.key_id,
    name: r.name,
    replica: r.replica,
    epoch: r.epoch,
    connected: r.connected === true || r.connected === 1,
    connectedAt: r.connected_at,
    lastSeenAt: r.last_seen_at,
    gpus: jsonColumn<MinerRecord["gpus"]>(r.gpus),
    models: jsonColumn<string[]>(r.models),
    slots: r.slots,
    draining: r.draining === true || r.draining === 1,
    drained: r.drained === true || r.drained === 1,
    jobsDone: Number(r.jobs_done ?? 0),
    jobsFailed: Number(r.jobs_failed ?? 0),
    lastError: r.last_error === null || r.last_error === undefined ? null : jsonColumn<MinerRecord["lastError"]>(r.last_error),
    tokensPerSecond: r.tokens_per_s ?? null,
    gpuLoad: r.gpu_load === null || r.gpu_load === undefined ? null : jsonColumn<MinerRecord["gpuLoad"]>(r.gpu_load),
  };
}
