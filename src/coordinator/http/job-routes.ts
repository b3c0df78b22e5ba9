import { createHash, randomInt } from "node:crypto";
import type { FastifyPluginAsyncTypebox } from "@fastify/type-provider-typebox";
import { Type } from "@sinclair/typebox";
import { AppError, ConflictError, NotFoundError, ValidationError } from "../../common/errors.js";
import { GENERATION_BOUNDS, resolveGenerationParameters } from "../../protocol/generation.js";
import {
  CancelResponseSchema,
  HistoryQuerySchema,
  IdempotencyHeadersSchema,
  JobIdParamsSchema,
  JobStatusSchema,
  ListJobsQuerySchema,
  ListJobsResponseSchema,
  ProblemSchema,
  SubmitJobBodySchema,
  SubmitJobResponseSchema,
  type JobStatus,
  type SubmitJobBody,
} from "../../protocol/jobs.js";
import type { CoordinatorContext } from "../context.js";
import type { JobRecord } from "../store/job-store.js";
import { estimateJob } from "../estimates.js";
import { fleetWaitingReason } from "../waiting-reason.js";
import { renderResult } from "../results/render-result.js";
import { jobSummary, jobView, withLiveProgress } from "./job-view.js";
import { StatusCache } from "./status-cache.js";
import { tenantOf } from "./auth-hook.js";
import { bodyLimitOptions } from "./body-limit.js";

const errors = {
  400: ProblemSchema,
  401: ProblemSchema,
  404: ProblemSchema,
  409: ProblemSchema,
  422: ProblemSchema,
  429: ProblemSchema,
};

/**
 * The download's answers, for /docs only: the route sends the stored bytes as a Buffer, which
 * a typed response schema would refuse (swaggerTransform adds them to the document).
 */
const DOWNLOAD_200 = {
  description: "The result: a JSON document (format json) or the generated text (format text), as an attachment",
  content: {
    "application/json": {
      schema: Type.Object(
        {
          job_id: Type.String({ description: "The job's id" }),
          model: Type.String({ description: "The model that ran it" }),
          output: Type.String({ description: "The generated text" }),
          finish_reason: Type.String({ description: "As result.finish_reason" }),
          usage: Type.Object({ prompt_tokens: Type.Integer({ description: "Tokens of the prompt" }), completion_tokens: Type.Integer({ description: "Tokens generated" }) }, { description: "Token counts" }),
          output_sha256: Type.String({ description: "SHA-256 (hex) of output's UTF-8 bytes" }),
          output_bytes: Type.Integer({ description: "Size of output in UTF-8 bytes" }),
          parameters: Type.Record(Type.String(), Type.Unknown(), { description: "The generation parameters it ran with" }),
          miner_id: Type.Union([Type.String(), Type.Null()], { description: "The miner that generated it" }),
          completed_at: Type.Union([Type.String({ format: "date-time" }), Type.Null()], { description: "When it completed" }),
        },
        { additionalProperties: true, description: "The result document (format json)" },
      ),
    },
    "text/plain": { schema: Type.String({ description: "The generated text (UTF-8)" }) },
  },
};

const FILE_ID = /^file_[a-z0-9]{1,64}$/;
const S3_URL = /^s3:\/\/([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:\/(.*))?$/;

/** `s3://bucket/prefix`: bucket must be allowed for the tenant; the prefix may not escape. */
export function checkDestination(ctx: CoordinatorContext, tenant: string, destination: string): void {
  if (destination === "local") return;
  const m = S3_URL.exec(destination);
  if (m === null) {
    throw new ValidationError('output_config.destination must be "local" or "s3://bucket/prefix"', { field: "output_config.destination" });
  }
  const prefix = m[2] ?? "";
  if (prefix.length > 512 || prefix.split("/").some((seg) => seg === ".." || seg === ".") || /[\0-\x1f\\]/.test(prefix)) {
    throw new ValidationError("output_config.destination has an unsafe object prefix", { field: "output_config.destination" });
  }
  const allowed = ctx.config.tenants[tenant]?.s3Buckets ?? [];
  if (!allowed.includes(m[1]!)) {
    throw new AppError("s3_bucket_not_allowed", `bucket "${m[1]}" is not allowed for this API key`, { status: 422 });
  }
}

/** `from`/`to` of the history: a day (whole day, UTC) or an ISO time. */
export function parseRangeBound(value: string, end: boolean, field: string): number {
  if (/^\d{4}-\d{2}-\d{2}$/.test(value)) {
    const t = Date.parse(`${value}T00:00:00.000Z`);
    if (!Number.isNaN(t) && new Date(t).toISOString().startsWith(value)) return end ? t + 86_400_000 - 1 : t;
  } else if (/^\d{4}-\d{2}-\d{2}T/.test(value)) {
    const t = Date.parse(value);
    if (!Number.isNaN(t)) return t;
  }
  throw new ValidationError(`${field} must be a date (YYYY-MM-DD) or an ISO 8601 time`, { field });
}

/**
 * What an Idempotency-Key is bound to: the body as JSON with every object's keys sorted, so a
 * retry that serialises the same body in another key order is the same request.
 */
function requestHash(body: SubmitJobBody): string {
  return createHash("sha256").update(JSON.stringify(body, sortedKeys)).digest("hex");
}

function sortedKeys(_key: string, value: unknown): unknown {
  if (value === null || typeof value !== "object" || Array.isArray(value)) return value;
  const record = value as Record<string, unknown>;
  return Object.fromEntries(Object.keys(record).sort().map((k) => [k, record[k]]));
}

/**
 * Accepts a job: checks the input, destination, limits, quotas and queue, estimates it and
 * creates it (or returns the job an Idempotency-Key already made). POST /v1/jobs and the
 * OpenAI-compatible POST /v1/completions both come here, so they share every rule.
 */
export async function acceptJob(
  ctx: CoordinatorContext,
  tenant: string,
  body: SubmitJobBody,
  idem: string | undefined,
  reply: { header: (name: string, value: string) => unknown },
): Promise<{ job: JobRecord; created: boolean; waitingReason: string | undefined }> {
    const now = ctx.now();
    let input = body.input;
    let inputFileId: string | null = null;
    if (FILE_ID.test(body.input)) {
      const file = await ctx.store.getFile(tenant, body.input);
      if (file === null) throw new AppError("file_not_found", `no uploaded file ${body.input}`, { status: 422 });
      input = file.content;
      inputFileId = file.id;
    }
    if (input.length > ctx.config.limits.maxInputChars) {
      throw new ValidationError(`input is longer than ${ctx.config.limits.maxInputChars} characters`, { field: "input" });
    }
    const destination = body.output_config?.destination ?? "local";
    checkDestination(ctx, tenant, destination);
    const timeoutSeconds = body.timeout_seconds ?? ctx.config.scheduler.defaultTimeoutSeconds;
    if (timeoutSeconds > ctx.config.limits.maxTimeoutSeconds) {
      throw new ValidationError(`timeout_seconds may be at most ${ctx.config.limits.maxTimeoutSeconds}`, { field: "timeout_seconds" });
    }
    const requirements = body.requirements ?? {};
    const parameters = resolveGenerationParameters(body.parameters, () => randomInt(0, GENERATION_BOUNDS.seed.max));
    const { usage, queuedForTenant: queued, queuedForModel } = await ctx.store.submitCounts(tenant, body.model);
    if (usage.resultBytes >= ctx.config.limits.maxResultBytesPerTenant) {
      throw new AppError(
        "storage_quota_exceeded",
        `this tenant's stored results take ${usage.resultBytes} bytes of its ${ctx.config.limits.maxResultBytesPerTenant}-byte quota ([limits] max_result_bytes_per_tenant): delete results (DELETE /v1/jobs/{id}/result) or wait for them to expire`,
        { status: 429, details: { quota: "results", limit_bytes: ctx.config.limits.maxResultBytesPerTenant, used_bytes: usage.resultBytes } },
      );
    }
    if (queued >= ctx.config.limits.maxQueuedPerTenant) {
      void reply.header("Retry-After", "10");
      throw new AppError("queue_full", `this tenant already has ${queued} queued jobs`, { status: 429, retryable: true });
    }
    const eligibleMiners = await ctx.miners.eligibleMiners({ model: body.model, requirements });
    const waitingReason = eligibleMiners === 0 ? await fleetWaitingReason(ctx, { model: body.model, requirements }) : undefined;
    if (waitingReason !== undefined && ctx.config.scheduler.rejectUnservable) {
      throw new AppError("unservable", `${waitingReason}; this coordinator refuses such jobs ([scheduler] reject_unservable)`, { status: 422, details: { waiting_reason: waitingReason } });
    }
    const capacity = await ctx.miners.capacity({ model: body.model, requirements });
    const observed = ctx.config.estimates.observe ? ctx.speeds.speed(body.model, requirements.gpu_type, now) : undefined;
    const estimate = estimateJob(
      ctx.config,
      { model: body.model, maxNewTokens: parameters.max_new_tokens, requirements },
      { ahead: queuedForModel, ...capacity },
      observed,
    );
    // An Idempotency-Key reused with another body is the store's IdempotencyMismatchError: a 409.
    const created = await ctx.store.createJob(
      {
          tenant,
          model: body.model,
          input,
          inputFileId,
          outputFormat: body.output_config?.format ?? "json",
          destination,
          requirements,
          priority: body.priority ?? "normal",
          timeoutSeconds,
          parameters,
          maxAttempts: ctx.config.scheduler.maxAttempts,
          estimatedCost: estimate.estimatedCost,
          estimatedTimeSeconds: estimate.estimatedTimeSeconds,
          ...(idem === undefined ? {} : { idempotency: { key: idem, requestHash: requestHash(body) } }),
        },
        now,
      );
    return { ...created, waitingReason };
}

export function jobRoutes(ctx: CoordinatorContext): FastifyPluginAsyncTypebox {
  const statusCache = new StatusCache();
  /** GET /v1/jobs/{id}'s answer: a queued job's with its place in the queue and, when no miner can run it, why. */
  const statusView = async (job: JobRecord): Promise<JobStatus> => {
    if (job.status !== "queued") return jobView(withLiveProgress(job, ctx.events));
    const eligibleMiners = await ctx.miners.eligibleMiners(job);
    const view = jobView(job, { eligibleMiners, queuePosition: await ctx.store.queuePosition(job) });
    const reason = eligibleMiners === 0 ? await fleetWaitingReason(ctx, job) : undefined;
    return reason === undefined ? view : { ...view, waiting_reason: reason };
  };
  return async (app) => {
    app.post(
      "/v1/jobs",
      {
        ...bodyLimitOptions(app, ctx.config.server.bodyLimit, "the request body", "[server] body_limit"),
        schema: {
          summary: "Submit a job",
          tags: ["jobs"],
          body: SubmitJobBodySchema,
          headers: IdempotencyHeadersSchema,
          response: { 201: SubmitJobResponseSchema, 200: SubmitJobResponseSchema, 413: ProblemSchema, ...errors },
          description: "429 storage_quota_exceeded when the tenant's stored results are over [limits] max_result_bytes_per_tenant; 429 queue_full past max_queued_jobs_per_tenant.",
        },
      },
      async (request, reply) => {
        const tenant = tenantOf(request);
        const result = await acceptJob(ctx, tenant, request.body, request.headers["idempotency-key"], reply);
        const { job, created } = result;
        if (created) {
          request.log.info({ jobId: job.id, model: job.model, tenant }, "job accepted");
          ctx.metrics.submitted.inc();
        }
        if (created) void reply.header("location", `/v1/jobs/${job.id}`);
        return reply.code(created ? 201 : 200).send({
          job_id: job.id,
          estimated_cost: job.estimatedCost,
          estimated_time_seconds: job.estimatedTimeSeconds,
          status: job.status,
          ...(result.waitingReason === undefined || job.status !== "queued" ? {} : { waiting_reason: result.waitingReason }),
        });
      },
    );

    app.get(
      "/v1/jobs",
      {
        schema: { summary: "List jobs", tags: ["jobs"], querystring: ListJobsQuerySchema, response: { 200: ListJobsResponseSchema, ...errors } },
      },
      async (request) => {
        const q = request.query;
        const limit = Math.min(q.limit ?? 20, ctx.config.limits.maxPageSize);
        const page = await ctx.store.listJobs(tenantOf(request), {
          limit,
          ...(q.status === undefined ? {} : { status: q.status }),
          ...(q.cursor === undefined ? {} : { cursor: q.cursor }),
        });
        return { jobs: page.items.map(jobSummary), total: page.total, has_more: page.nextCursor !== null, next_cursor: page.nextCursor };
      },
    );

    // Registered before /v1/jobs/:job_id; find-my-way also prefers static segments.
    app.get(
      "/v1/jobs/history",
      {
        schema: { summary: "Finished jobs in a date range", tags: ["jobs"], querystring: HistoryQuerySchema, response: { 200: ListJobsResponseSchema, ...errors } },
      },
      async (request) => {
        const q = request.query;
        const from = parseRangeBound(q.from, false, "from");
        const to = parseRangeBound(q.to, true, "to");
        if (from > to) throw new ValidationError("from must not be after to", { field: "from" });
        const limit = Math.min(q.limit ?? 50, ctx.config.limits.maxPageSize);
        const page = await ctx.store.listHistory(tenantOf(request), { from, to, limit, ...(q.cursor === undefined ? {} : { cursor: q.cursor }) });
        return { jobs: page.items.map(jobSummary), total: page.total, has_more: page.nextCursor !== null, next_cursor: page.nextCursor };
      },
    );

    app.get(
      "/v1/jobs/:job_id",
      {
        // The answer is sent as written (JSON text, see below): its schema is for /docs only.
        config: { swaggerTransform: ({ schema, url }) => ({ schema: { ...schema, response: { 200: JobStatusSchema, ...errors } }, url }) },
        schema: { summary: "Job status", tags: ["jobs"], params: JobIdParamsSchema },
      },
      async (request, reply) => {
        const tenant = tenantOf(request);
        const jobId = request.params.job_id;
        // The most polled answer, kept as written until what it is made of changes (status-cache.ts).
        const at = { store: ctx.store.readVersion(), fleet: ctx.miners.version(), live: ctx.events.liveProgress(jobId) };
        let body = statusCache.get(tenant, jobId, at);
        if (body === undefined) {
          const job = await ctx.store.getJob(tenant, jobId);
          if (job === null) throw new NotFoundError("job_not_found", "no such job");
          // jobView builds the answer field by field, so JSON.stringify writes it as the schema
          // would (test/coordinator/api.test.ts holds that) without the schema serializer's
          // validation of each nullable field.
          body = JSON.stringify(await statusView(job));
          statusCache.set(tenant, jobId, at, body);
        }
        return reply.type("application/json; charset=utf-8").send(body);
      },
    );

    app.delete(
      "/v1/jobs/:job_id",
      { schema: { summary: "Cancel a job", tags: ["jobs"], params: JobIdParamsSchema, response: { 200: CancelResponseSchema, 202: CancelResponseSchema, ...errors } } },
      async (request, reply) => {
        const r = await ctx.store.requestCancel(tenantOf(request), request.params.job_id, ctx.now());
        if (r === null) throw new NotFoundError("job_not_found", "no such job");
        if (r.outcome === "conflict") {
          throw new ConflictError("job_finished", `the job is already ${r.job.status}`, { job_id: r.job.id, state: r.job.status });
        }
        const body = { job_id: r.job.id, status: r.job.status, cancel_requested: r.job.cancelRequested };
        return reply.code(r.outcome === "cancelled" ? 200 : 202).send(body);
      },
    );

    app.get(
      "/v1/jobs/:job_id/download",
      {
        config: { swaggerTransform: ({ schema, url }) => ({ schema: { ...schema, response: { 200: DOWNLOAD_200, 401: ProblemSchema, 404: ProblemSchema, 409: ProblemSchema, 410: ProblemSchema, 429: ProblemSchema } }, url }) },
        schema: {
          summary: "Download the result (JSON or text, per output_config.format)",
          description:
            "The body's own SHA-256 is in the Digest (sha-256=<base64>) and ETag (\"<hex>\") headers. With format text the body is the generated text and that checksum equals result.output_sha256; with format json the body is a document whose output_sha256/output_bytes describe its `output` field.",
          tags: ["jobs"],
          params: JobIdParamsSchema,
        },
      },
      async (request, reply) => {
        const job = await ctx.store.getJob(tenantOf(request), request.params.job_id);
        if (job === null) throw new NotFoundError("job_not_found", "no such job");
        if (job.status !== "completed" || job.result === null) {
          throw new ConflictError("job_not_completed", `the job is ${job.status}; a result can be downloaded once it is completed`, {
            job_id: job.id,
            state: job.status,
          });
        }
        const removed = job.result.removed;
        if (removed !== undefined) {
          throw new AppError(
            removed.reason === "expired" ? "result_expired" : "result_deleted",
            removed.reason === "expired"
              ? `the result was deleted at ${new Date(removed.at).toISOString()}, past the coordinator's retention ([results] retention)`
              : `the result was deleted by its owner at ${new Date(removed.at).toISOString()}`,
            { status: 410, details: { job_id: job.id } },
          );
        }
        const doc = renderResult(job, job.result, await ctx.results.read(job.result.location));
        const body = Buffer.from(doc.body, "utf8");
        const digest = createHash("sha256").update(body).digest();
        return reply
          .type(doc.contentType)
          .header("Content-Disposition", `attachment; filename="${job.id}.${doc.ext}"`)
          .header("Digest", `sha-256=${digest.toString("base64")}`)
          .header("ETag", `"${digest.toString("hex")}"`)
          .send(body);
      },
    );

    app.delete(
      "/v1/jobs/:job_id/result",
      {
        schema: {
          summary: "Delete a completed job's stored result",
          description:
            "The job record stays (its result says available: false, removed.reason deleted) and the download answers 410. Idempotent: deleting again answers 204 too. A copy already uploaded to an s3:// destination is the tenant's and is not touched.",
          tags: ["jobs"],
          params: JobIdParamsSchema,
          response: { 204: Type.Null(), ...errors },
        },
      },
      async (request, reply) => {
        const tenant = tenantOf(request);
        const job = await ctx.store.getJob(tenant, request.params.job_id);
        if (job === null) throw new NotFoundError("job_not_found", "no such job");
        if (job.status !== "completed") {
          throw new ConflictError("job_not_completed", `the job is ${job.status}; only a completed job has a result to delete`, { job_id: job.id, state: job.status });
        }
        const removed = await ctx.store.removeResult(tenant, job.id, "deleted", ctx.now());
        // After the commit: a crash before this leaves a file the start-up sweep removes.
        if (removed !== null) await ctx.results.remove(removed.location);
        return reply.code(204).send(null);
      },
    );
  };
}
