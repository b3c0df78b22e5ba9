import { Type, type Static } from "@sinclair/typebox";
import { GenerationParametersSchema } from "./generation.js";
import { JOB_STATES, PRIORITIES } from "./version.js";

/**
 * The client REST API's bodies (spec/client-api-reference.md), one TypeBox schema each: fastify
 * validates with them, the TypeScript types come from them, and so does /openapi.json.
 */
const JobId = Type.String({ pattern: "^job_[A-Za-z0-9]{1,64}$", description: "A job id, e.g. job_abc123" });
const IsoTime = Type.String({ format: "date-time" });
const Nullable = <T extends Parameters<typeof Type.Union>[0][number]>(t: T) => Type.Union([t, Type.Null()]);

export const JobStateSchema = Type.Union(JOB_STATES.map((s) => Type.Literal(s)));
export const PrioritySchema = Type.Union(PRIORITIES.map((p) => Type.Literal(p)), { default: "normal" });

export const OUTPUT_FORMATS = ["json", "text"] as const;
export type OutputFormat = (typeof OUTPUT_FORMATS)[number];

export const OutputConfigSchema = Type.Object(
  {
    /** "local" (the coordinator's data dir) or "s3://bucket/prefix" (bucket allowed for the tenant). */
    destination: Type.Optional(Type.String({ minLength: 1, maxLength: 1024, default: "local" })),
    format: Type.Optional(Type.Union(OUTPUT_FORMATS.map((f) => Type.Literal(f)), { default: "json" })),
  },
  { additionalProperties: false },
);

export const RequirementsSchema = Type.Object(
  {
    /** GPU model, matched loosely: "v100" matches "Tesla V100-SXM2-16GB". */
    gpu_type: Type.Optional(Type.String({ minLength: 1, maxLength: 64 })),
    /** GPUs on one miner that satisfy the rest. */
    gpu_count: Type.Optional(Type.Integer({ minimum: 1, maximum: 64 })),
    /** VRAM per GPU, GB. */
    min_vram_gb: Type.Optional(Type.Number({ minimum: 0, maximum: 4096 })),
  },
  { additionalProperties: false },
);
export type Requirements = Static<typeof RequirementsSchema>;

export const SubmitJobBodySchema = Type.Object(
  {
    model: Type.String({ minLength: 1, maxLength: 128, pattern: "^[A-Za-z0-9][A-Za-z0-9._/-]*$" }),
    /** The prompt, or the id of a file uploaded with POST /v1/files ("file_…"). */
    input: Type.String({ minLength: 1, maxLength: 131072 }),
    output_config: Type.Optional(OutputConfigSchema),
    requirements: Type.Optional(RequirementsSchema),
    priority: Type.Optional(PrioritySchema),
    timeout_seconds: Type.Optional(Type.Integer({ minimum: 1 })),
    parameters: Type.Optional(GenerationParametersSchema),
  },
  { additionalProperties: false },
);
export type SubmitJobBody = Static<typeof SubmitJobBodySchema>;

export const SubmitJobResponseSchema = Type.Object({
  job_id: Type.String(),
  estimated_cost: Type.Number(),
  estimated_time_seconds: Type.Number(),
  status: JobStateSchema,
  /** Why no connected miner can run the job yet (it stays queued: a miner may join). */
  waiting_reason: Type.Optional(Type.String()),
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
  usage: Type.Object({ prompt_tokens: Type.Integer(), completion_tokens: Type.Integer() }),
  tokens_per_second: Type.Number({ description: "Decode speed the miner reported for this run (clamped to a plausible maximum)." }),
  /** "local", the requested s3://bucket/prefix while its upload is pending or failed, the object's s3:// URI once uploaded. */
  destination: Type.String(),
  /** Only for s3:// destinations: pending (not tried yet or retrying), uploaded, or failed (the error; the local copy stays). */
  upload: Type.Optional(
    Type.Object({
      state: Type.Union([Type.Literal("pending"), Type.Literal("uploaded"), Type.Literal("failed")]),
      uri: Type.Optional(Type.String()),
      error: Type.Optional(Type.Object({ code: Type.String(), message: Type.String() })),
      attempts: Type.Optional(Type.Integer()),
    }),
  ),
  /** false once the stored output is gone (deleted by its owner, or past [results] retention); the download then answers 410. */
  available: Type.Boolean({ description: "false once the stored output was deleted (DELETE /v1/jobs/{id}/result) or expired ([results] retention); the download then answers 410" }),
  removed: Type.Optional(
    Type.Object({ reason: Type.Union([Type.Literal("deleted"), Type.Literal("expired")]), at: IsoTime }, { description: "Why and when the stored output was removed." }),
  ),
});

export const JobErrorSchema = Type.Object({ code: Type.String(), message: Type.String() });

export const JobStatusSchema = Type.Object({
  job_id: Type.String(),
  status: JobStateSchema,
  model: Type.String(),
  /** 0–100: generated tokens of max_new_tokens while running; 100 when completed. */
  progress: Type.Number(),
  miner_id: Nullable(Type.String()),
  created_at: IsoTime,
  started_at: Nullable(IsoTime),
  completed_at: Nullable(IsoTime),
  result: Nullable(JobResultSchema),
  priority: Type.String(),
  attempt: Type.Integer(),
  cancel_requested: Type.Boolean(),
  error: Nullable(JobErrorSchema),
  /** For queued jobs: connected miners that could run it now (0 says why it waits). */
  eligible_miners: Type.Optional(Type.Integer()),
  /** For queued jobs no connected miner can run: why, e.g. "no connected miner serves model gpt2 (served: tiny-gpt2)". */
  waiting_reason: Type.Optional(Type.String()),
  /** For queued jobs: jobs ahead of it. */
  queue_position: Type.Optional(Type.Integer()),
  parameters: Type.Record(Type.String(), Type.Unknown()),
  requirements: Type.Record(Type.String(), Type.Unknown()),
  output_config: Type.Object({ destination: Type.String(), format: Type.String() }),
  timeout_seconds: Type.Integer(),
});
export type JobStatus = Static<typeof JobStatusSchema>;

export const JobSummarySchema = Type.Object({
  job_id: Type.String(),
  status: JobStateSchema,
  model: Type.String(),
  progress: Type.Number(),
  created_at: IsoTime,
  completed_at: Nullable(IsoTime),
});

export const ListJobsQuerySchema = Type.Object(
  {
    status: Type.Optional(JobStateSchema),
    limit: Type.Optional(Type.Integer({ minimum: 1, default: 20 })),
    cursor: Type.Optional(Type.String({ maxLength: 256 })),
  },
  { additionalProperties: false },
);

export const ListJobsResponseSchema = Type.Object({
  jobs: Type.Array(JobSummarySchema),
  total: Type.Integer(),
  has_more: Type.Boolean(),
  /** Pass as `cursor` for the next page; null on the last one. */
  next_cursor: Nullable(Type.String()),
});

export const HistoryQuerySchema = Type.Object(
  {
    /** First day (YYYY-MM-DD, UTC) or an ISO time, inclusive. */
    from: Type.String({ minLength: 1, maxLength: 64 }),
    /** Last day (YYYY-MM-DD, UTC, the whole day) or an ISO time, inclusive. */
    to: Type.String({ minLength: 1, maxLength: 64 }),
    limit: Type.Optional(Type.Integer({ minimum: 1, default: 50 })),
    cursor: Type.Optional(Type.String({ maxLength: 256 })),
  },
  { additionalProperties: false },
);

export const CancelResponseSchema = Type.Object({
  job_id: Type.String(),
  status: JobStateSchema,
  cancel_requested: Type.Boolean(),
});

export const FileResponseSchema = Type.Object({
  file_id: Type.String({ description: "Use as a job's input." }),
  bytes: Type.Integer({ description: "Size of the file as uploaded (a leading byte-order mark included)." }),
  sha256: Type.String({ description: "Lowercase hex SHA-256 of the file as uploaded: what sha256sum of the uploaded file prints. The prompt is its UTF-8 text without a leading byte-order mark." }),
  created_at: IsoTime,
});

export const JobIdParamsSchema = Type.Object({ job_id: JobId });

export const ProblemSchema = Type.Object({
  type: Type.String(),
  title: Type.String(),
  status: Type.Integer(),
  code: Type.String(),
  detail: Type.String(),
  retryable: Type.Optional(Type.Boolean()),
  errors: Type.Optional(Type.Array(Type.Object({ path: Type.String(), message: Type.String() }))),
  /** The job a 409 is about, and the state it is in. */
  job_id: Type.Optional(Type.String()),
  state: Type.Optional(JobStateSchema),
  /** On 429 and 503: seconds to wait (also in Retry-After). */
  retry_after_seconds: Type.Optional(Type.Number()),
}, { additionalProperties: true });
