import { Type, type Static } from "@sinclair/typebox";
import { GenerationParametersSchema } from "./generation.js";
import { JOB_STATES, PRIORITIES } from "./version.js";

/**
 * The client REST API's bodies (spec/client-api-reference.md), one TypeBox schema each: fastify
 * validates with them, the TypeScript types come from them, and so does /openapi.json.
 */
const JobId = Type.String({ pattern: "^job_[A-Za-z0-9]{1,64}$", description: "A job id, e.g. job_abc123", examples: ["job_abc123"] });
const IsoTime = (description: string) => Type.String({ format: "date-time", description });
const Nullable = <T extends Parameters<typeof Type.Union>[0][number]>(t: T, description: string) => Type.Union([t, Type.Null()], { description });

export const JobStateSchema = Type.Union(JOB_STATES.map((s) => Type.Literal(s)), {
  description: "queued → assigned → running → completed, or failed, cancelled, timed_out (ran past timeout_seconds) or expired (never started in time)",
});
export const PrioritySchema = Type.Union(PRIORITIES.map((p) => Type.Literal(p)), { default: "normal", description: "Queue order: high before normal before low; first come first served within one" });

export const OUTPUT_FORMATS = ["json", "text"] as const;
export type OutputFormat = (typeof OUTPUT_FORMATS)[number];

export const OutputConfigSchema = Type.Object(
  {
    /** "local" (the coordinator's data dir) or "s3://bucket/prefix" (bucket allowed for the tenant). */
    destination: Type.Optional(
      Type.String({ minLength: 1, maxLength: 1024, default: "local", description: 'Where the result goes: "local" (the coordinator keeps it for the download) or "s3://bucket/prefix" (also uploaded there; the bucket must be allowed for the tenant)' }),
    ),
    format: Type.Optional(
      Type.Union(OUTPUT_FORMATS.map((f) => Type.Literal(f)), { default: "json", description: "The download: json (a document with the output and its metadata) or text (the output alone)" }),
    ),
  },
  { additionalProperties: false, description: "Where the result is stored and in which format" },
);

export const RequirementsSchema = Type.Object(
  {
    /** GPU model, matched loosely: "v100" matches "Tesla V100-SXM2-16GB". */
    gpu_type: Type.Optional(Type.String({ minLength: 1, maxLength: 64, description: 'GPU model, matched loosely: "v100" matches "Tesla V100-SXM2-16GB"' })),
    /** GPUs on one miner that satisfy the rest. */
    gpu_count: Type.Optional(Type.Integer({ minimum: 1, maximum: 64, description: "GPUs one miner must have that satisfy the rest" })),
    /** VRAM per GPU, GB. */
    min_vram_gb: Type.Optional(Type.Number({ minimum: 0, maximum: 4096, description: "VRAM per GPU, GB" })),
  },
  { additionalProperties: false, description: "Hard constraints on the miner; without them any miner serving the model runs it, CPU miners included" },
);
export type Requirements = Static<typeof RequirementsSchema>;

export const SubmitJobBodySchema = Type.Object(
  {
    model: Type.String({
      minLength: 1,
      maxLength: 128,
      pattern: "^[A-Za-z0-9][A-Za-z0-9._/-]*$",
      description: "The model to run, by the name miners serve it under (GET /v1/models lists them), e.g. tiny-gpt2 or gpt2. A model no connected miner serves is still accepted and waits (see waiting_reason).",
    }),
    /** The prompt, or the id of a file uploaded with POST /v1/files ("file_…"). */
    input: Type.String({ minLength: 1, maxLength: 131072, description: "The prompt, or the file_id of a file uploaded with POST /v1/files (file_…)" }),
    output_config: Type.Optional(OutputConfigSchema),
    requirements: Type.Optional(RequirementsSchema),
    priority: Type.Optional(PrioritySchema),
    timeout_seconds: Type.Optional(Type.Integer({ minimum: 1, description: "Longest the job may take from submit to result, seconds (at most [limits] max_timeout_seconds); past it the job is timed_out or expired. Default [scheduler] default_timeout_seconds." })),
    parameters: Type.Optional(GenerationParametersSchema),
  },
  {
    additionalProperties: false,
    "x-examples": {
      minimal: { summary: "A prompt, every default", value: { model: "tiny-gpt2", input: "The GPU network" } },
      parameters: {
        summary: "Sampling parameters and a text download",
        value: { model: "gpt2", input: "Once upon a time", output_config: { format: "text" }, parameters: { max_new_tokens: 64, temperature: 0.7, top_p: 0.9, stop: ["\n\n"], seed: 7 } },
      },
      file: {
        summary: "An uploaded file as the prompt, on a V100, to S3",
        value: { model: "gpt2", input: "file_abc123", output_config: { destination: "s3://my-bucket/results", format: "json" }, requirements: { gpu_type: "v100", gpu_count: 1, min_vram_gb: 16 }, priority: "high", timeout_seconds: 3600 },
      },
    },
  },
);
export type SubmitJobBody = Static<typeof SubmitJobBodySchema>;

export const SubmitJobResponseSchema = Type.Object({
  job_id: Type.String({ description: "The new job's id (with 200, the job an earlier request with this Idempotency-Key made)" }),
  estimated_cost: Type.Number({ description: "Estimated price from the [pricing] table, in its currency units" }),
  estimated_time_seconds: Type.Number({ description: "Estimated seconds to the result: queue wait plus generation ([estimates])" }),
  status: JobStateSchema,
  /** Why no connected miner can run the job yet (it stays queued: a miner may join). */
  waiting_reason: Type.Optional(Type.String({ description: "Why no connected miner can run the job yet (it stays queued: a miner may join), e.g. no connected miner serves model gpt2 (served: tiny-gpt2)" })),
});
export type SubmitJobResponse = Static<typeof SubmitJobResponseSchema>;

export const JobResultSchema = Type.Object({
  /** Where to fetch it: GET /v1/jobs/{id}/download. */
  download_url: Type.String({ description: "GET this to download the result (JSON or text, per output_config.format)" }),
  format: Type.String({ description: "output_config.format: json (a document with the output and its metadata) or text (the output alone)" }),
  output_sha256: Type.String({
    description:
      "Lowercase hex SHA-256 of the generated text's UTF-8 bytes (what the miner hashed). With format text it is also the download's; with format json the download's own checksum is its Digest/ETag header.",
  }),
  output_bytes: Type.Integer({
    description: "Size of the generated text in UTF-8 bytes: the bytes output_sha256 hashes (with format text, the download's size too; with format json, not the document's).",
  }),
  finish_reason: Type.String({ description: "length (max_new_tokens reached), eos (the model ended), stop (a stop sequence), cancelled" }),
  usage: Type.Object(
    { prompt_tokens: Type.Integer({ description: "Tokens of the prompt" }), completion_tokens: Type.Integer({ description: "Tokens generated" }) },
    { description: "Token counts of this run" },
  ),
  tokens_per_second: Type.Number({ description: "Decode speed the miner reported for this run (clamped to a plausible maximum)." }),
  /** "local", the requested s3://bucket/prefix while its upload is pending or failed, the object's s3:// URI once uploaded. */
  destination: Type.String({ description: "local, the requested s3://bucket/prefix while its upload is pending or failed, or the object's s3:// URI once uploaded" }),
  /** Only for s3:// destinations: pending (not tried yet or retrying), uploaded, or failed (the error; the local copy stays). */
  upload: Type.Optional(
    Type.Object(
      {
        state: Type.Union([Type.Literal("pending"), Type.Literal("uploaded"), Type.Literal("failed")], { description: "pending (not tried yet, or retrying), uploaded, or failed (a refusal such as no such bucket; the local copy stays)" }),
        uri: Type.Optional(Type.String({ description: "The uploaded object, s3://bucket/key" })),
        error: Type.Optional(Type.Object({ code: Type.String({ description: "The S3 error code" }), message: Type.String({ description: "The S3 error message" }) }, { description: "Why the last try failed" })),
        attempts: Type.Optional(Type.Integer({ description: "Upload tries so far" })),
      },
      { description: "Only for s3:// destinations: the upload's state" },
    ),
  ),
  /** false once the stored output is gone (deleted by its owner, or past [results] retention); the download then answers 410. */
  available: Type.Boolean({ description: "false once the stored output was deleted (DELETE /v1/jobs/{id}/result) or expired ([results] retention); the download then answers 410" }),
  removed: Type.Optional(
    Type.Object(
      {
        reason: Type.Union([Type.Literal("deleted"), Type.Literal("expired")], { description: "deleted (by its owner) or expired (past [results] retention)" }),
        at: IsoTime("When it was removed"),
      },
      { description: "Why and when the stored output was removed." },
    ),
  ),
});

export const JobErrorSchema = Type.Object({
  code: Type.String({ description: "A stable code, e.g. lease_expired, engine_error, prompt_too_long" }),
  message: Type.String({ description: "What went wrong, from the miner or the coordinator" }),
});

export const JobStatusSchema = Type.Object({
  job_id: Type.String({ description: "The job's id" }),
  status: JobStateSchema,
  model: Type.String({ description: "The model the job asked for, as submitted (GET /v1/models lists the models miners serve)" }),
  /** 0–100: generated tokens of max_new_tokens while running; 100 when completed. */
  progress: Type.Number({ description: "0–100: generated tokens of max_new_tokens while running (live), 100 when completed" }),
  miner_id: Nullable(Type.String(), "The miner running (or that ran) the current attempt; null while queued"),
  created_at: IsoTime("When the job was accepted"),
  started_at: Nullable(IsoTime("When the current attempt started running"), "When the current attempt started running; null before"),
  completed_at: Nullable(IsoTime("When the job reached its terminal state"), "When the job reached its terminal state; null before"),
  result: Nullable(JobResultSchema, "The result summary once completed, else null"),
  priority: Type.String({ description: "low, normal or high" }),
  attempt: Type.Integer({ description: "The current attempt, from 1; a requeue (a miner lost, a lease expired) starts the next" }),
  cancel_requested: Type.Boolean({ description: "A cancel was asked and the running miner has not stopped yet" }),
  error: Nullable(JobErrorSchema, "Why the job failed, timed out or expired; null otherwise"),
  /** For queued jobs: connected miners that could run it now (0 says why it waits). */
  eligible_miners: Type.Optional(Type.Integer({ description: "Queued jobs only: connected miners that could run it now (0: see waiting_reason)" })),
  /** For queued jobs no connected miner can run: why, e.g. "no connected miner serves model gpt2 (served: tiny-gpt2)". */
  waiting_reason: Type.Optional(Type.String({ description: 'Queued jobs no connected miner can run: why, e.g. "no connected miner serves model gpt2 (served: tiny-gpt2)"' })),
  /** For queued jobs: jobs ahead of it. */
  queue_position: Type.Optional(Type.Integer({ description: "Queued jobs only: jobs ahead of it for its model" })),
  parameters: Type.Record(Type.String(), Type.Unknown(), { description: "The generation parameters the job runs with, defaults filled in at submit (seed included)" }),
  requirements: Type.Record(Type.String(), Type.Unknown(), { description: "The requirements as submitted ({} for none)" }),
  output_config: Type.Object(
    { destination: Type.String({ description: "local or s3://bucket/prefix, as submitted" }), format: Type.String({ description: "json or text" }) },
    { description: "The output_config the job runs with, defaults filled in" },
  ),
  timeout_seconds: Type.Integer({ description: "The job's timeout, seconds (the default filled in)" }),
});
export type JobStatus = Static<typeof JobStatusSchema>;

export const JobSummarySchema = Type.Object({
  job_id: Type.String({ description: "The job's id" }),
  status: JobStateSchema,
  model: Type.String({ description: "The model the job asked for" }),
  progress: Type.Number({ description: "0–100, as in the job status" }),
  created_at: IsoTime("When the job was accepted"),
  completed_at: Nullable(IsoTime("When it ended"), "When it ended; null before"),
});

export const ListJobsQuerySchema = Type.Object(
  {
    status: Type.Optional(Type.Union(JOB_STATES.map((s) => Type.Literal(s)), { description: "Only jobs in this state", examples: ["running"] })),
    limit: Type.Optional(Type.Integer({ minimum: 1, default: 20, description: "Jobs per page (at most [limits] max_page_size)", examples: [10] })),
    cursor: Type.Optional(Type.String({ maxLength: 256, description: "next_cursor of the previous page" })),
  },
  { additionalProperties: false },
);

export const ListJobsResponseSchema = Type.Object({
  jobs: Type.Array(JobSummarySchema, { description: "This page, newest first" }),
  total: Type.Integer({ description: "Jobs that match, on all pages" }),
  has_more: Type.Boolean({ description: "Another page follows" }),
  /** Pass as `cursor` for the next page; null on the last one. */
  next_cursor: Nullable(Type.String(), "Pass as cursor for the next page; null on the last one"),
});

export const HistoryQuerySchema = Type.Object(
  {
    /** First day (YYYY-MM-DD, UTC) or an ISO time, inclusive. */
    from: Type.String({ minLength: 1, maxLength: 64, description: "First day (YYYY-MM-DD, UTC) or an ISO time, inclusive", examples: ["2026-01-01"] }),
    /** Last day (YYYY-MM-DD, UTC, the whole day) or an ISO time, inclusive. */
    to: Type.String({ minLength: 1, maxLength: 64, description: "Last day (YYYY-MM-DD, UTC, the whole day) or an ISO time, inclusive", examples: ["2026-01-31"] }),
    limit: Type.Optional(Type.Integer({ minimum: 1, default: 50, description: "Jobs per page (at most [limits] max_page_size)" })),
    cursor: Type.Optional(Type.String({ maxLength: 256, description: "next_cursor of the previous page" })),
  },
  { additionalProperties: false },
);

export const CancelResponseSchema = Type.Object({
  job_id: Type.String({ description: "The job's id" }),
  status: JobStateSchema,
  cancel_requested: Type.Boolean({ description: "true with 202: the job runs and its miner was told to stop; with 200 the job was queued and is cancelled now" }),
});

export const FileResponseSchema = Type.Object({
  file_id: Type.String({ description: "Use as a job's input." }),
  bytes: Type.Integer({ description: "Size of the file as uploaded (a leading byte-order mark included)." }),
  sha256: Type.String({ description: "Lowercase hex SHA-256 of the file as uploaded: what sha256sum of the uploaded file prints. The prompt is its UTF-8 text without a leading byte-order mark." }),
  created_at: IsoTime("When it was uploaded"),
});

/** The Idempotency-Key header of POST /v1/jobs and POST /v1/completions. */
export const IdempotencyHeadersSchema = Type.Object({
  "idempotency-key": Type.Optional(
    Type.String({ minLength: 1, maxLength: 255, description: "Makes a retried submit return the first request's job (200) instead of a new one; reused with another body it is a 409", examples: ["4f1c2d7e-order-1234"] }),
  ),
});

export const JobIdParamsSchema = Type.Object({ job_id: JobId });

export const ProblemSchema = Type.Object({
  type: Type.String({ description: "This coordinator's page about the code: /problems/<code> (absolute under [server] public_url when set)" }),
  title: Type.String({ description: "The HTTP status in words" }),
  status: Type.Integer({ description: "The HTTP status" }),
  code: Type.String({ description: "A stable code: GET /problems lists them, with what to do" }),
  detail: Type.String({ description: "What went wrong this time, for a person" }),
  retryable: Type.Optional(Type.Boolean({ description: "Whether the same request can succeed later" })),
  errors: Type.Optional(Type.Array(Type.Object({ path: Type.String({ description: "The part and field, e.g. body/parameters/top_p" }), message: Type.String({ description: "What is wrong with it" }) }), { description: "422 validation_failed: every field at fault" })),
  /** The job a 409 is about, and the state it is in. */
  job_id: Type.Optional(Type.String({ description: "The job a 409 or 410 is about" })),
  state: Type.Optional(Type.Union(JOB_STATES.map((s) => Type.Literal(s)), { description: "The state the job of a 409 is in" })),
  /** On 429 and 503: seconds to wait (also in Retry-After). */
  retry_after_seconds: Type.Optional(Type.Number({ description: "On 429 and 503: seconds to wait (also in Retry-After)" })),
}, { additionalProperties: true, description: "application/problem+json (RFC 9457)" });
