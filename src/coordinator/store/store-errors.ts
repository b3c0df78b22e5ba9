import { ConflictError } from "../../common/errors.js";

/** An Idempotency-Key reused with a different request body (409, with the job it names). */
export class IdempotencyMismatchError extends ConflictError {
  constructor(readonly jobId: string) {
    super("idempotency_key_reused", "this Idempotency-Key was used with a different request", { job_id: jobId });
  }
}
