import { timeOrderedId } from "../../ids.js";
import { newJobValues, toJob, type JobRow } from "../../job-row.js";
import type { JobRecord, NewJob } from "../../job-store.js";
import { IdempotencyMismatchError } from "../../store-errors.js";
import { loggedEvent, type PgDb } from "../pg-db.js";

const INSERT_QUEUED = `WITH upd AS (
  INSERT INTO jobs (id, tenant, model, input, input_file_id, output_format, destination, requirements,
    priority, priority_rank, timeout_seconds, parameters, status, max_attempts, created_at,
    estimated_cost, estimated_time_seconds, idempotency_key, request_hash, retry_of, event_seq)
  VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 'queued', $13, $14, $15, $16, $17, $18, $19, 1)
  ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
  RETURNING *),
${loggedEvent({ type: "queued", data: "$20::jsonb", at: "$14", channel: "$21", replica: "$22" })}`;

/**
 * Commits a queued job: the row, its first event (seq 1) and the event's NOTIFY in one
 * autocommit statement (durable at its commit). With an Idempotency-Key, the unique index
 * decides between two replicas submitting the same key at once: the second INSERT waits for the
 * first, does nothing, and gets the first's job (or a 409 when its body differs) — never a second
 * job, never a 500.
 */
export async function createJob(db: PgDb, job: NewJob, now: number): Promise<{ job: JobRecord; created: boolean }> {
  const id = timeOrderedId("job_", now);
  const data = { model: job.model, priority: job.priority, ...(job.retryOf === undefined ? {} : { retry_of: job.retryOf }) };
  const row = await db.writeWithEvent<JobRow & { event_seq: number }>(INSERT_QUEUED, [...newJobValues(job, id, now), JSON.stringify(data)], { type: "queued", at: now, data: () => data });
  if (row === undefined) {
    // The key's first submit has committed (the INSERT waited for it): its job is the answer.
    const existing = (await db.query<JobRow>("SELECT * FROM jobs WHERE tenant = $1 AND idempotency_key = $2", [job.tenant, job.idempotency!.key]))[0]!;
    if (existing.request_hash !== job.idempotency!.requestHash) throw new IdempotencyMismatchError(existing.id);
    return { job: toJob(existing), created: false };
  }
  return { job: toJob(row), created: true };
}
