import type { FastifyPluginAsyncTypebox } from "@fastify/type-provider-typebox";
import { Type, type Static } from "@sinclair/typebox";
import { ConflictError, NotFoundError, ValidationError } from "../../common/errors.js";
import type { SwaggerTransform } from "@fastify/swagger";
import { CancelResponseSchema, JobIdParamsSchema, JobStateSchema, JobStatusSchema } from "../../protocol/jobs.js";
import { isTerminal } from "../../protocol/version.js";
import type { CoordinatorContext } from "../context.js";
import type { JobRecord, MinerRecord } from "../store/job-store.js";
import { adminJobView, adminMinerView, type AdminMinerView } from "./admin-view.js";
import { AfterQuery, followJob, jobEventStreamDoc } from "./events-route.js";
import { withLiveProgress } from "./job-view.js";

/** Throughput is shown over the last hour in one-minute buckets. */
const BUCKET_MS = 60_000;
const BUCKETS = 60;
/** Miners seen within this long are listed even when disconnected. */
const RECENT_MINERS_MS = 24 * 3_600_000;
/** Leases read per fleet view (each miner's current jobs). */
const MAX_LEASES = 10_000;
const FAILURES_SINCE_MS = 24 * 3_600_000;

const MinerIdParams = Type.Object({ miner_id: Type.String({ pattern: "^miner_[a-z0-9]{1,64}$", maxLength: 70, description: "A miner id, from GET /v1/admin/miners", examples: ["miner_xyz789"] }) });
const AdminJobsQuery = Type.Object(
  {
    status: Type.Optional(JobStateSchema),
    model: Type.Optional(Type.String({ minLength: 1, maxLength: 128, description: "Only jobs for this model", examples: ["tiny-gpt2"] })),
    tenant: Type.Optional(Type.String({ minLength: 1, maxLength: 128, description: "Only this tenant's jobs", examples: ["acme"] })),
    miner_id: Type.Optional(Type.String({ minLength: 1, maxLength: 70, description: "Only jobs this miner ran", examples: ["miner_xyz789"] })),
    /** Created at or after (ISO time). */
    from: Type.Optional(Type.String({ minLength: 1, maxLength: 64, description: "Created at or after (ISO time)", examples: ["2026-12-02T00:00:00Z"] })),
    /** Created at or before (ISO time). */
    to: Type.Optional(Type.String({ minLength: 1, maxLength: 64, description: "Created at or before (ISO time)", examples: ["2026-12-02T23:59:59Z"] })),
    limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 500, default: 50, description: "Jobs per page" })),
    cursor: Type.Optional(Type.String({ maxLength: 256, description: "next_cursor of the previous page" })),
  },
  { additionalProperties: false },
);

const S = (description: string) => Type.String({ description });
const NullableS = (description: string) => Type.Union([Type.String(), Type.Null()], { description });

const AdminMinerSchema = Type.Object({
  miner_id: S("The miner's id"),
  name: S("The name it registered with ([miner] name)"),
  key_id: S("The id of the miner key it connected with"),
  replica: NullableS("The replica holding its session; null when not connected"),
  connected: Type.Boolean({ description: "Connected now" }),
  connected_since: NullableS("When its session began; null when not connected"),
  last_seen_at: NullableS("Its last heartbeat"),
  gpus: Type.Array(
    Type.Object({
      index: Type.Integer({ description: "GPU index on the host" }),
      name: S("GPU name as the miner reported it (cut at 64 characters)"),
      vram_total_mb: Type.Integer({ description: "VRAM, MB" }),
      vram_free_mb: Type.Integer({ description: "Free VRAM at its last report, MB" }),
      utilization_percent: Type.Union([Type.Number(), Type.Null()], { description: "null: miners do not report it yet" }),
    }),
    { description: "Its GPUs (empty for a CPU miner)" },
  ),
  models: Type.Array(Type.String(), { description: "Models it serves" }),
  slots: Type.Integer({ description: "Jobs it runs at once" }),
  slots_used: Type.Integer({ description: "Slots running a job now" }),
  slots_free: Type.Integer({ description: "Slots free (0 when not connected)" }),
  draining: Type.Boolean({ description: "The miner is draining itself (shutting down)" }),
  drained: Type.Boolean({ description: "An operator drained it: no new jobs until undrained" }),
  tokens_per_second: Type.Union([Type.Number(), Type.Null()], { description: "Its recent decode speed" }),
  jobs_done: Type.Integer({ description: "Jobs it completed" }),
  jobs_failed: Type.Integer({ description: "Attempts of its that failed" }),
  last_error: Type.Union([Type.Object({ code: S("A stable code"), message: S("What went wrong"), at: S("When") }), Type.Null()], { description: "Its last error" }),
  current_jobs: Type.Array(
    Type.Object({
      job_id: S("The job"),
      status: S("assigned or running"),
      model: S("Its model"),
      tenant: S("Its tenant"),
      progress: Type.Number({ description: "0–100" }),
      attempt: Type.Integer({ description: "The attempt it runs" }),
    }),
    { description: "The jobs it holds leases on" },
  ),
});

const AdminJobSchema = Type.Composite([
  JobStatusSchema,
  Type.Object({
    tenant: S("The tenant that submitted it"),
    retry_of: NullableS("The job this one retries (POST /v1/admin/jobs/{id}/retry)"),
    failures: Type.Integer({ description: "Attempts that failed so far" }),
    max_attempts: Type.Integer({ description: "Attempts it may take ([scheduler] max_attempts)" }),
    input: Type.Optional(S("The prompt, only with [admin] show_outputs = true")),
  }),
]);

/**
 * Answers for /docs only (swaggerTransform): these views are built by admin-view.ts and read by
 * the dashboard, so they are not serialised through a schema that could drop a field.
 */
function docAnswers(response: Record<number, unknown>): { swaggerTransform: SwaggerTransform } {
  return { swaggerTransform: ({ schema, url }) => ({ schema: { ...schema, response }, url }) };
}

const QueueSchema = Type.Object(
  {
    items: Type.Array(
      Type.Object(
        { model: Type.String({ description: "The model" }), priority: Type.String({ description: "low, normal or high" }), count: Type.Integer({ description: "Jobs queued" }) },
        { additionalProperties: true },
      ),
      { description: "Queued jobs by model and priority" },
    ),
    total: Type.Integer({ description: "Jobs queued in all" }),
  },
  { additionalProperties: true },
);

const ThroughputSchema = Type.Object(
  {
    bucket_seconds: Type.Integer({ description: "Length of one bucket, seconds (60)" }),
    buckets: Type.Array(
      Type.Object(
        {
          start: Type.String({ format: "date-time", description: "The bucket's start" }),
          jobs: Type.Integer({ description: "Jobs completed in it" }),
          tokens: Type.Integer({ description: "Tokens those jobs generated" }),
          tokens_per_second: Type.Number({ description: "tokens / bucket_seconds" }),
          jobs_per_minute: Type.Number({ description: "Jobs completed per minute" }),
        },
        { additionalProperties: true },
      ),
      { description: "The last hour, oldest first" },
    ),
  },
  { additionalProperties: true },
);

const FailuresSchema = Type.Object(
  {
    items: Type.Array(
      Type.Object(
        {
          job_id: Type.String({ description: "The job" }),
          tenant: Type.String({ description: "Its tenant" }),
          model: Type.String({ description: "Its model" }),
          status: Type.String({ description: "failed or timed_out" }),
          error: Type.Union([Type.Object({ code: Type.String({ description: "A stable code" }), message: Type.String({ description: "What went wrong" }) }, { additionalProperties: true }), Type.Null()], { description: "Why" }),
          miner_id: Type.Union([Type.String(), Type.Null()], { description: "The miner of its last attempt" }),
          attempt: Type.Integer({ description: "Its last attempt" }),
          completed_at: Type.Union([Type.String({ format: "date-time" }), Type.Null()], { description: "When it ended" }),
        },
        { additionalProperties: true },
      ),
      { description: "Latest first" },
    ),
  },
  { additionalProperties: true },
);

const DisconnectSchema = Type.Object(
  {
    miner_id: Type.String({ description: "The miner" }),
    disconnected: Type.Boolean({ description: "Always true: its connection is being closed" }),
    replica: Type.Union([Type.String(), Type.Null()], { description: "The replica that held its connection" }),
  },
  { additionalProperties: true },
);

function time(field: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const t = Date.parse(v);
  if (Number.isNaN(t)) throw new ValidationError(`${field} is not a date or time (ISO 8601, e.g. 2026-12-02T10:00:00Z)`, { field });
  return t;
}

/** The fleet, miners connected first, each with its current jobs (with their live progress). */
async function fleetAndLeases(ctx: CoordinatorContext): Promise<{ miners: AdminMinerView[]; leases: JobRecord[] }> {
  const now = ctx.now();
  const [miners, stored] = await Promise.all([ctx.store.listMiners(now - RECENT_MINERS_MS), ctx.store.listActiveLeases(MAX_LEASES)]);
  const leases = stored.map((j) => withLiveProgress(j, ctx.events));
  return { miners: miners.map((m) => minerView(ctx, m, leases)), leases };
}

/** One miner as the fleet view shows it: a row still marked connected whose replica stopped refreshing it is not connected any more. */
function minerView(ctx: CoordinatorContext, m: MinerRecord, leases: readonly JobRecord[]): AdminMinerView {
  const stale = ctx.now() - 3 * ctx.config.scheduler.heartbeatMs;
  return adminMinerView(m.connected && (m.lastSeenAt ?? 0) < stale ? { ...m, connected: false } : m, leases);
}

async function fleet(ctx: CoordinatorContext): Promise<AdminMinerView[]> {
  return (await fleetAndLeases(ctx)).miners;
}

async function throughput(ctx: CoordinatorContext): Promise<{ bucket_seconds: number; buckets: { start: string; jobs: number; tokens: number; tokens_per_second: number; jobs_per_minute: number }[] }> {
  const now = ctx.now();
  const since = Math.floor(now / BUCKET_MS) * BUCKET_MS - (BUCKETS - 1) * BUCKET_MS;
  const got = new Map((await ctx.store.throughput(since, BUCKET_MS)).map((b) => [b.start, b]));
  const buckets = [];
  for (let i = 0; i < BUCKETS; i += 1) {
    const start = since + i * BUCKET_MS;
    const b = got.get(start);
    const jobs = b?.jobs ?? 0;
    const tokens = b?.tokens ?? 0;
    buckets.push({ start: new Date(start).toISOString(), jobs, tokens, tokens_per_second: Math.round((tokens / (BUCKET_MS / 1000)) * 10) / 10, jobs_per_minute: jobs });
  }
  return { bucket_seconds: BUCKET_MS / 1000, buckets };
}

async function failures(ctx: CoordinatorContext, limit: number): Promise<Static<typeof FailuresSchema>["items"]> {
  return (await ctx.store.recentFailures(ctx.now() - FAILURES_SINCE_MS, limit)).map((j) => ({
    job_id: j.id,
    tenant: j.tenant,
    model: j.model,
    status: j.status,
    error: j.error,
    miner_id: j.minerId,
    attempt: j.attempt,
    completed_at: j.completedAt === null ? null : new Date(j.completedAt).toISOString(),
  }));
}

async function queue(ctx: CoordinatorContext): Promise<{ items: { model: string; priority: string; count: number }[]; total: number }> {
  const items = await ctx.store.queueDepth();
  return { items, total: items.reduce((n, q) => n + q.count, 0) };
}

/**
 * The operator endpoints, /v1/admin/… (operator keys or a dashboard session; see auth-hook.ts):
 * the fleet, every tenant's jobs, queue depth, throughput, failures, and the actions drain,
 * undrain, disconnect, cancel and retry. Jobs show metadata; prompts and live text only with
 * `[admin] show_outputs = true`.
 */
export function adminRoutes(ctx: CoordinatorContext): FastifyPluginAsyncTypebox {
  return async (app) => {
    const tags = ["admin"];
    const show = (): boolean => ctx.config.admin.showOutputs;
    const anyJob = async (id: string): Promise<JobRecord> => {
      const job = await ctx.store.getJobById(id);
      if (job === null) throw new NotFoundError("job_not_found", "no such job");
      return job;
    };

    app.get("/v1/admin/overview", { schema: { summary: "Everything the dashboard shows, in one read", tags } }, async () => {
      const [{ miners, leases }, byState, q, t, f] = await Promise.all([fleetAndLeases(ctx), ctx.store.countByState(), queue(ctx), throughput(ctx), failures(ctx, 20)]);
      const connected = miners.filter((m) => m.connected);
      // Decode speed now: the running attempts' latest progress reports (every replica forwards its own).
      let live = 0;
      for (const j of leases) {
        const p = ctx.events.liveProgress(j.id);
        if (p !== undefined && p.attempt === j.attempt && j.status === "running") live += p.tokensPerSecond;
      }
      return {
        at: new Date(ctx.now()).toISOString(),
        replica: ctx.replica,
        storage: ctx.config.storage.backend,
        show_outputs: show(),
        summary: {
          miners_connected: connected.length,
          miners_drained: connected.filter((m) => m.drained).length,
          slots: connected.reduce((n, m) => n + m.slots, 0),
          slots_free: connected.reduce((n, m) => n + (m.drained ? 0 : m.slots_free), 0),
          tokens_per_second: Math.round(live * 10) / 10,
          jobs: byState,
        },
        miners,
        queue: q,
        throughput: t,
        failures: f,
      };
    });

    app.get("/v1/admin/miners", { config: docAnswers({ 200: Type.Object({ items: Type.Array(AdminMinerSchema, { description: "Connected miners first" }) }) }), schema: { summary: "The fleet: every miner connected or seen in the last 24 h", tags } }, async () => ({ items: await fleet(ctx) }));

    const minerAction = (verb: "drain" | "undrain"): void => {
      app.post(
        `/v1/admin/miners/:miner_id/${verb}`,
        {
          config: docAnswers({ 200: AdminMinerSchema }),
          schema: {
            summary: verb === "drain" ? "Drain a miner: no new jobs (kept across reconnects and replicas)" : "Undrain a miner",
            tags,
            params: MinerIdParams,
          },
        },
        async (request) => {
          const id = request.params.miner_id;
          const drained = verb === "drain";
          if (!(await ctx.store.setMinerDrained(id, drained, ctx.now()))) throw new NotFoundError("miner_not_found", "no such miner");
          ctx.gateway?.setDrained(id, drained);
          request.log.info({ minerId: id, operator: request.apiKey?.id, drained }, drained ? "operator drained a miner" : "operator undrained a miner");
          // Only this miner and its own leases, not the whole fleet.
          const [m, leases] = await Promise.all([ctx.store.getMiner(id), ctx.store.listLeasedBy(id)]);
          return m === null ? { miner_id: id, drained } : minerView(ctx, m, leases.map((j) => withLiveProgress(j, ctx.events)));
        },
      );
    };
    minerAction("drain");
    minerAction("undrain");

    app.post(
      "/v1/admin/miners/:miner_id/disconnect",
      { schema: { summary: "Disconnect a miner (its leases are handed back; the daemon reconnects: drain it first to keep it idle)", tags, params: MinerIdParams, response: { 202: DisconnectSchema } } },
      async (request, reply) => {
        const id = request.params.miner_id;
        const m = await ctx.store.getMiner(id);
        if (m === null) throw new NotFoundError("miner_not_found", "no such miner");
        if (!m.connected) throw new ConflictError("miner_not_connected", "the miner is not connected");
        request.log.info({ minerId: id, operator: request.apiKey?.id }, "operator disconnected a miner");
        const here = (await ctx.gateway?.disconnect(id)) ?? false;
        if (!here) await ctx.fleetControl.disconnectElsewhere(id);
        return reply.code(202).send({ miner_id: id, disconnected: true, replica: m.replica });
      },
    );

    app.get("/v1/admin/jobs", {
      config: docAnswers({
        200: Type.Object({
          items: Type.Array(AdminJobSchema, { description: "This page, newest first" }),
          total: Type.Integer({ description: "Jobs that match, on all pages" }),
          next_cursor: NullableS("Pass as cursor for the next page; null on the last one"),
        }),
      }),
      schema: { summary: "Every tenant's jobs, newest first, filtered and paged", tags, querystring: AdminJobsQuery } }, async (request) => {
      const q = request.query;
      const from = time("from", q.from);
      const to = time("to", q.to);
      const page = await ctx.store.listAllJobs({
        limit: q.limit ?? 50,
        ...(q.status === undefined ? {} : { status: q.status }),
        ...(q.model === undefined ? {} : { model: q.model }),
        ...(q.tenant === undefined ? {} : { tenant: q.tenant }),
        ...(q.miner_id === undefined ? {} : { minerId: q.miner_id }),
        ...(from === undefined ? {} : { from }),
        ...(to === undefined ? {} : { to }),
        ...(q.cursor === undefined ? {} : { cursor: q.cursor }),
      });
      return { items: page.items.map((j) => adminJobView(j, show())), total: page.total, next_cursor: page.nextCursor };
    });

    app.get("/v1/admin/jobs/:job_id", {
      config: docAnswers({
        200: Type.Composite([
          AdminJobSchema,
          Type.Object({
            events: Type.Array(
              Type.Object({ seq: Type.Integer({ description: "Its sequence number (the SSE id)" }), type: S("The state change, as the SSE event name"), at: S("When") }, { additionalProperties: true }),
              { description: "The job's event log, oldest first, each with its data" },
            ),
            live_text: Type.Optional(NullableS("The running attempt's text so far, only with [admin] show_outputs = true")),
          }),
        ]),
      }),
      schema: { summary: "One job of any tenant, with its event log", tags, params: JobIdParamsSchema } }, async (request) => {
      const job = await anyJob(request.params.job_id);
      const events = await ctx.store.listEvents(job.id, 0);
      return {
        ...adminJobView(job, show()),
        events: events.map((e) => ({ seq: e.seq, type: e.type, at: new Date(e.at).toISOString(), ...e.data })),
        ...(show() ? { live_text: ctx.events.liveText(job.id)?.text ?? null } : {}),
      };
    });

    app.get(
      "/v1/admin/jobs/:job_id/events",
      {
        schema: {
          summary: "Follow any tenant's job (Server-Sent Events, as GET /v1/jobs/{id}/events; token events only with [admin] show_outputs)",
          tags,
          params: JobIdParamsSchema,
          querystring: AfterQuery,
          ...jobEventStreamDoc(
            "Follow any tenant's job, as GET /v1/jobs/{id}/events does. `token` and `text_restart` events (and the text in `completed`'s stream) come only with `[admin] show_outputs = true`; otherwise state changes and progress only.",
          ),
        },
      },
      async (request, reply) => {
        const after = request.query.after;
        await followJob(ctx, request, reply, request.params.job_id, { tenant: null, text: show(), ...(after === undefined ? {} : { after }) });
      },
    );

    app.post("/v1/admin/jobs/:job_id/cancel", { schema: { summary: "Cancel any tenant's job", tags, params: JobIdParamsSchema, response: { 200: CancelResponseSchema, 202: CancelResponseSchema } } }, async (request, reply) => {
      const job = await anyJob(request.params.job_id);
      const r = await ctx.store.requestCancel(job.tenant, job.id, ctx.now());
      if (r === null) throw new NotFoundError("job_not_found", "no such job");
      if (r.outcome === "conflict") throw new ConflictError("job_finished", `the job is already ${r.job.status}`, { job_id: r.job.id, state: r.job.status });
      request.log.info({ jobId: job.id, operator: request.apiKey?.id, outcome: r.outcome }, "operator cancelled a job");
      return reply.code(r.outcome === "cancelled" ? 200 : 202).send({ job_id: r.job.id, status: r.job.status, cancel_requested: r.job.cancelRequested });
    });

    app.post(
      "/v1/admin/jobs/:job_id/retry",
      { config: docAnswers({ 201: AdminJobSchema }), schema: { summary: "Retry a failed, timed-out, expired or cancelled job as a new job linked by retry_of", tags, params: JobIdParamsSchema } },
      async (request, reply) => {
        const job = await anyJob(request.params.job_id);
        if (!isTerminal(job.status) || job.status === "completed") {
          throw new ConflictError("not_retryable", `only a failed, timed_out, expired or cancelled job can be retried; this one is ${job.status}`, { job_id: job.id, state: job.status });
        }
        const { job: created } = await ctx.store.createJob(
          {
            tenant: job.tenant,
            model: job.model,
            input: job.input,
            inputFileId: job.inputFileId,
            outputFormat: job.outputFormat,
            destination: job.destination,
            requirements: job.requirements,
            priority: job.priority,
            timeoutSeconds: job.timeoutSeconds,
            parameters: job.parameters,
            maxAttempts: ctx.config.scheduler.maxAttempts,
            estimatedCost: job.estimatedCost,
            estimatedTimeSeconds: job.estimatedTimeSeconds,
            retryOf: job.id,
          },
          ctx.now(),
        );
        request.log.info({ jobId: created.id, retryOf: job.id, operator: request.apiKey?.id }, "operator retried a job");
        return reply.code(201).header("Location", `/v1/admin/jobs/${created.id}`).send(adminJobView(created, show()));
      },
    );

    app.get("/v1/admin/queue", { schema: { summary: "Queued jobs by model and priority", tags, response: { 200: QueueSchema } } }, async () => queue(ctx));
    app.get("/v1/admin/throughput", { schema: { summary: "Completions over the last hour: jobs and tokens per one-minute bucket", tags, response: { 200: ThroughputSchema } } }, async () => throughput(ctx));
    app.get(
      "/v1/admin/failures",
      { schema: { summary: "Jobs that failed or timed out in the last 24 h, latest first", tags, response: { 200: FailuresSchema }, querystring: Type.Object({ limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 500, default: 50, description: "Jobs at most" })) }, { additionalProperties: false }) } },
      async (request) => ({ items: await failures(ctx, request.query.limit ?? 50) }),
    );
  };
}
