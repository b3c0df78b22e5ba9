import { randomId } from "../../ids.js";
import { newJobValues, toJob, type JobRow } from "../../job-row.js";
import type { JobRecord, NewJob } from "../../job-store.js";
import { IdempotencyMismatchError } from "../../store-errors.js";
import type { PgDb } from "../pg-db.js";

/**
 * Commits a queued job. With an Idempotency-Key, the unique index decides between two replicas
 * submitting the same key at once: the second INSERT waits for the first, does nothing, and gets
 * the first's job (or a 409 when its body differs) — never a second job, never a 500.
 */
export function createJob(db: PgDb, job: NewJob, now: number): Promise<{ job: JobRecord; created: boolean }> {
  return db.tx(async (c, emit) => {
    const id = randomId("job_");
    const inserted = await c.query<JobRow>(
      `INSERT INTO jobs (id, tenant, model, input, input_file_id, output_format, destination, requirements,
         priority, priority_rank, timeout_seconds, parameters, status, max_attempts, created_at,
         estimated_cost, estimated_time_seconds, idempotency_key, request_hash, retry_of)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 'queued', $13, $14, $15, $16, $17, $18, $19)
       ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
       RETURNING *`,
      newJobValues(job, id, now),
    );
    const row = inserted.rows[0];
    if (row === undefined) {
      const existing = (await c.query<JobRow>("SELECT * FROM jobs WHERE tenant = $1 AND idempotency_key = $2", [job.tenant, job.idempotency!.key])).rows[0]!;
      if (existing.request_hash !== job.idempotency!.requestHash) throw new IdempotencyMismatchError(existing.id);
      return { job: toJob(existing), created: false };
    }
    await emit({ jobId: id, type: "queued", at: now, data: { model: job.model, priority: job.priority, ...(job.retryOf === undefined ? {} : { retry_of: job.retryOf }) } });
    return { job: toJob(row), created: true };
  });
}
