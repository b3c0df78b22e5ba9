/**
 * Every `code` the coordinator answers an HTTP request with, described once: the problem `type`
 * of an error (`/problems/<code>`, see problem.ts) points at the page GET /problems/<code> renders
 * from this table. test/coordinator/problem-codes.test.ts scans the source so that a new code
 * cannot ship without an entry.
 */
export interface ProblemCode {
  /** The HTTP statuses this code comes with (most have one). */
  statuses: readonly number[];
  title: string;
  /** What happened. */
  meaning: string;
  /** What the caller can do about it. */
  action: string;
  /** Whether sending the same request again can succeed (after Retry-After when the answer has one). */
  retryable: boolean;
}

export const PROBLEM_CODES = {
  bad_request: {
    statuses: [400],
    title: "Invalid request",
    meaning: "The request could not be read: an invalid header, an empty JSON body, a Content-Length that does not match the body, or a URL with a broken percent-encoding.",
    action: "Fix the request as the detail says; sending it again unchanged gets the same answer.",
    retryable: false,
  },
  malformed_json: {
    statuses: [400],
    title: "Malformed JSON",
    meaning: "The body was sent as application/json but is not valid JSON.",
    action: "Send a valid JSON document (check quoting and trailing commas).",
    retryable: false,
  },
  unauthorized: {
    statuses: [401],
    title: "Unauthorized",
    meaning: "No API key, or one that is unknown or revoked (Authorization: Bearer <key>). At the miner gateway: no valid miner key.",
    action: "Send a valid key of the right kind: client keys come from `aitbc keys create`, miner keys from `aitbc keys create --miner`.",
    retryable: false,
  },
  invalid_key: {
    statuses: [401],
    title: "Invalid operator key",
    meaning: "The dashboard login was given a key that is not a valid operator key.",
    action: "Log in with an operator key (`aitbc keys create --operator`).",
    retryable: false,
  },
  client_key_required: {
    statuses: [403],
    title: "Client key required",
    meaning: "An operator or miner key was used on the client API.",
    action: "Use a client key (`aitbc keys create`) for /v1/jobs, /v1/files and the OpenAI-compatible routes.",
    retryable: false,
  },
  operator_key_required: {
    statuses: [403],
    title: "Operator key required",
    meaning: "A client or miner key was used on the operator endpoints (/v1/admin/…).",
    action: "Use an operator key (`aitbc keys create --operator`) or a dashboard session.",
    retryable: false,
  },
  cross_origin: {
    statuses: [403],
    title: "Cross-origin request",
    meaning: "A dashboard session cookie came with a request from another site (its Origin is not this coordinator).",
    action: "Act from the coordinator's own dashboard pages, or use an operator key in the Authorization header.",
    retryable: false,
  },
  not_found: {
    statuses: [404],
    title: "No such route",
    meaning: "No endpoint answers this method and path (or no problem code by this name).",
    action: "Check the path and method against /docs.",
    retryable: false,
  },
  job_not_found: {
    statuses: [404],
    title: "Job not found",
    meaning: "No job has this id, or it belongs to another tenant (which is answered the same way).",
    action: "Check the id (job_…) and that the key is of the tenant that submitted the job.",
    retryable: false,
  },
  file_not_found: {
    statuses: [404, 422],
    title: "File not found",
    meaning: "No uploaded file has this id for this tenant: 404 on DELETE /v1/files/{id}, 422 when a job's input names it.",
    action: "Upload the file again (POST /v1/files) and use the file_id it answers.",
    retryable: false,
  },
  miner_not_found: {
    statuses: [404],
    title: "Miner not found",
    meaning: "No miner with this id was ever registered.",
    action: "Take the id from GET /v1/admin/miners.",
    retryable: false,
  },
  chat_not_supported: {
    statuses: [404],
    title: "Chat completions not supported",
    meaning: "POST /v1/chat/completions needs a model with a chat template; the GPT-2 models this network serves have none.",
    action: "Use POST /v1/completions with a prompt.",
    retryable: false,
  },
  job_finished: {
    statuses: [409],
    title: "Job already finished",
    meaning: "A cancel was asked for a job that is already in a terminal state (completed, failed, cancelled, timed_out, expired); `state` says which.",
    action: "Nothing to cancel: read the job (GET /v1/jobs/{id}) for its outcome.",
    retryable: false,
  },
  job_not_completed: {
    statuses: [409],
    title: "Job not completed",
    meaning: "The job has no result yet (or ended without one): a download or a result delete needs a completed job. `state` says where it is.",
    action: "Wait for it to complete (GET /v1/jobs/{id}/events), then try again.",
    retryable: true,
  },
  idempotency_key_reused: {
    statuses: [409],
    title: "Idempotency-Key reused",
    meaning: "This Idempotency-Key was already used with a different request body; `job_id` is the job the first request made.",
    action: "Use a new key for a new request, or send exactly the first body again to get its job back.",
    retryable: false,
  },
  miner_not_connected: {
    statuses: [409],
    title: "Miner not connected",
    meaning: "A disconnect was asked for a miner that is not connected.",
    action: "Nothing to do; GET /v1/admin/miners shows who is connected.",
    retryable: false,
  },
  not_retryable: {
    statuses: [409],
    title: "Job cannot be retried",
    meaning: "Only a failed, timed_out, expired or cancelled job can be retried; this one is queued, running or completed.",
    action: "Wait for it to end, or submit a new job.",
    retryable: false,
  },
  job_cancelled: {
    statuses: [409],
    title: "Job cancelled",
    meaning: "The completion's job was cancelled before it produced a result (OpenAI-compatible routes).",
    action: "Send the completion again if it is still wanted.",
    retryable: false,
  },
  job_failed: {
    statuses: [502],
    title: "Job failed",
    meaning: "The completion's job failed on every attempt the coordinator allows; the message names the miner's error (OpenAI-compatible routes).",
    action: "Send it again; if it keeps failing, GET /v1/jobs/{id} shows the error and an operator can look at the miner.",
    retryable: true,
  },
  job_timed_out: {
    statuses: [502],
    title: "Job timed out",
    meaning: "The completion's job ran past its timeout_seconds (OpenAI-compatible routes).",
    action: "Send it again with fewer max_tokens, or use POST /v1/jobs with a longer timeout_seconds.",
    retryable: true,
  },
  job_expired: {
    statuses: [502],
    title: "Job expired",
    meaning: "The completion's job waited in the queue past its timeout without a miner taking it (OpenAI-compatible routes).",
    action: "Check that a miner serving the model is connected (GET /v1/models), then send it again.",
    retryable: true,
  },
  result_deleted: {
    statuses: [410],
    title: "Result deleted",
    meaning: "The job's stored output was deleted by its owner (DELETE /v1/jobs/{id}/result); the job record stays.",
    action: "Submit the job again to regenerate it (the same seed gives the same text on the same model).",
    retryable: false,
  },
  result_expired: {
    statuses: [410],
    title: "Result expired",
    meaning: "The job's stored output is older than the coordinator's retention ([results] retention) and was deleted; the job record stays.",
    action: "Submit the job again, and download results within the retention period (or send them to an s3:// destination).",
    retryable: false,
  },
  payload_too_large: {
    statuses: [413],
    title: "Payload too large",
    meaning: "The body is larger than this endpoint accepts; the detail and `limit_bytes` name the limit and its config key ([server] body_limit for POST /v1/jobs, [limits] max_file_size for POST /v1/files).",
    action: "Send less: a long prompt as an uploaded file (POST /v1/files) within its limit.",
    retryable: false,
  },
  unsupported_media_type: {
    statuses: [415],
    title: "Unsupported media type",
    meaning: "The endpoint does not accept the body's Content-Type (JSON endpoints need application/json; POST /v1/files takes text/plain or application/octet-stream).",
    action: "Send the body with a Content-Type the endpoint lists in /docs.",
    retryable: false,
  },
  validation_failed: {
    statuses: [422],
    title: "Validation error",
    meaning: "The request is well-formed but a field is missing, unknown or out of bounds; `errors` lists each (path and message) and the detail names the first.",
    action: "Fix the fields named (bounds are in /docs); an unknown field must be dropped.",
    retryable: false,
  },
  s3_bucket_not_allowed: {
    statuses: [422],
    title: "S3 bucket not allowed",
    meaning: "output_config.destination names an s3:// bucket this tenant may not write to ([tenants.<name>] s3_buckets).",
    action: "Use \"local\" or a bucket the operator allowed for the tenant.",
    retryable: false,
  },
  unservable: {
    statuses: [422],
    title: "No miner can run this job",
    meaning: "No connected miner serves the model or meets the requirements, and this coordinator refuses such jobs ([scheduler] reject_unservable); `waiting_reason` says why.",
    action: "Pick a served model (GET /v1/models) or looser requirements, or wait for a miner that fits.",
    retryable: true,
  },
  upgrade_required: {
    statuses: [426],
    title: "WebSocket upgrade required",
    meaning: "The miner gateway path was requested as plain HTTP; it only takes WebSocket connections.",
    action: "Connect with a WebSocket client (Upgrade: websocket) and a miner key: `aitbc miner` does.",
    retryable: false,
  },
  rate_limited: {
    statuses: [429],
    title: "Rate limited",
    meaning: "This key used up its requests for the window ([limits] per_minute / per_hour), or a miner connection its frame budget.",
    action: "Wait for Retry-After (seconds; also `retry_after_seconds`) and send it again; RateLimit-* headers show the budget.",
    retryable: true,
  },
  too_many_streams: {
    statuses: [429],
    title: "Too many event streams",
    meaning: "This key already holds [limits] max_streams_per_key event streams open.",
    action: "Close a stream you no longer follow, or wait for Retry-After.",
    retryable: true,
  },
  queue_full: {
    statuses: [429],
    title: "Queue full",
    meaning: "This tenant already has [limits] max_queued_jobs_per_tenant jobs queued.",
    action: "Wait for Retry-After while queued jobs start, then submit again.",
    retryable: true,
  },
  storage_quota_exceeded: {
    statuses: [429],
    title: "Storage quota exceeded",
    meaning: "The tenant's stored files or results are over their quota ([limits] max_file_bytes_per_tenant, max_result_bytes_per_tenant); `quota`, `limit_bytes` and `used_bytes` say which and how much.",
    action: "Delete files (DELETE /v1/files/{id}) or results (DELETE /v1/jobs/{id}/result), or wait for them to expire.",
    retryable: false,
  },
  internal: {
    statuses: [500],
    title: "Server error",
    meaning: "The coordinator failed to handle the request: a fault of ours, logged on the coordinator (never with details to the client).",
    action: "Send it again; if it persists, report it with the time and path to the operator.",
    retryable: true,
  },
  unavailable: {
    statuses: [503],
    title: "Service unavailable",
    meaning: "The job store or result store did not answer (a database or disk outage); nothing was changed.",
    action: "Wait for Retry-After and send the same request again (use an Idempotency-Key on submits).",
    retryable: true,
  },
  too_many_connections: {
    statuses: [503],
    title: "Too many miner connections",
    meaning: "The miner gateway holds its maximum number of connections.",
    action: "The miner retries by itself with backoff; an operator can raise [gateway] max_connections or add a replica.",
    retryable: true,
  },
  dashboard_not_built: {
    statuses: [503],
    title: "Dashboard not built",
    meaning: "The dashboard's files are missing from this installation.",
    action: "Run `npm run build` on the coordinator host.",
    retryable: false,
  },
  schema_too_new: {
    statuses: [500],
    title: "Database schema too new",
    meaning: "The PostgreSQL schema was migrated by a newer coordinator than this one, so this one refuses to use it (seen in its log at start; requests meanwhile get 503 unavailable).",
    action: "Upgrade this coordinator to the version the other replicas run.",
    retryable: false,
  },
} as const satisfies Record<string, ProblemCode>;

export type ProblemCodeName = keyof typeof PROBLEM_CODES;

/** The entry for a code, or undefined for one the table does not have. */
export function problemCode(code: string): ProblemCode | undefined {
  return Object.hasOwn(PROBLEM_CODES, code) ? (PROBLEM_CODES as Record<string, ProblemCode>)[code] : undefined;
}

/** The problem `type` of a code: a path on this coordinator (made absolute with [server] public_url). */
export function problemPath(code: string): string {
  return `/problems/${code}`;
}
