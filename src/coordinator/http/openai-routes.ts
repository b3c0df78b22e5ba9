import { randomInt } from "node:crypto";
import type { FastifyPluginAsyncTypebox } from "@fastify/type-provider-typebox";
import { Type, type Static } from "@sinclair/typebox";
import { coalesced } from "../../common/coalesced.js";
import { AppError, NotFoundError, ValidationError, errorMessage } from "../../common/errors.js";
import { GENERATION_BOUNDS } from "../../protocol/generation.js";
import { IdempotencyHeadersSchema, type SubmitJobBody } from "../../protocol/jobs.js";
import { isTerminal } from "../../protocol/version.js";
import type { CoordinatorContext } from "../context.js";
import type { JobRecord } from "../store/job-store.js";
import { tenantOf } from "./auth-hook.js";
import { acceptJob } from "./job-routes.js";
import { SSE_HEADERS, type OpenStream } from "./stream-registry.js";

/** The routes answered in OpenAI's shapes (their errors too: see problem.ts). */
export const OPENAI_ROUTES = ["/v1/completions", "/v1/chat/completions", "/v1/models"];

const StopSchema = Type.Union([
  Type.String({ minLength: 1, maxLength: GENERATION_BOUNDS.stop.maxLength }),
  Type.Array(Type.String({ minLength: 1, maxLength: GENERATION_BOUNDS.stop.maxLength }), { maxItems: GENERATION_BOUNDS.stop.maxItems }),
  Type.Null(),
], { description: `A stop sequence, or up to ${GENERATION_BOUNDS.stop.maxItems}: the text ends before the first one` });

/**
 * OpenAI's completion body, as its SDKs send it. Fields we cannot honour are accepted only with
 * their neutral value (n = 1, echo false, best_of 1, no logprobs, no suffix, zero penalties), so a
 * request never silently means something else here.
 */
export const CompletionBodySchema = Type.Object(
  {
    model: Type.String({ minLength: 1, maxLength: 128, description: "The model, by the name miners serve it under (GET /v1/models)" }),
    prompt: Type.Union([Type.String(), Type.Array(Type.String(), { minItems: 1, maxItems: 1 })], { description: "The prompt: a string, or an array of one" }),
    max_tokens: Type.Optional(Type.Union([Type.Integer({ minimum: GENERATION_BOUNDS.max_new_tokens.min, maximum: GENERATION_BOUNDS.max_new_tokens.max }), Type.Null()], { description: "Tokens to generate at most. Default 16 (OpenAI's)." })),
    temperature: Type.Optional(Type.Union([Type.Number({ minimum: GENERATION_BOUNDS.temperature.min, maximum: GENERATION_BOUNDS.temperature.max }), Type.Null()], { description: "Sampling temperature, 0 = greedy. Default 1." })),
    top_p: Type.Optional(Type.Union([Type.Number({ minimum: GENERATION_BOUNDS.top_p.min, maximum: GENERATION_BOUNDS.top_p.max }), Type.Null()], { description: "Nucleus sampling mass. Default 1 (off)." })),
    stop: Type.Optional(StopSchema),
    seed: Type.Optional(Type.Union([Type.Integer({ minimum: GENERATION_BOUNDS.seed.min, maximum: GENERATION_BOUNDS.seed.max }), Type.Null()], { description: "Sampling seed: the same seed, model and parameters give the same text. Default: chosen at submit." })),
    stream: Type.Optional(Type.Union([Type.Boolean(), Type.Null()], { description: "true: answer text/event-stream chunks as the text is generated" })),
    stream_options: Type.Optional(
      Type.Union([Type.Object({ include_usage: Type.Optional(Type.Boolean({ description: "Send a last chunk with usage before [DONE]" })) }, { additionalProperties: false }), Type.Null()], { description: "With stream: true" }),
    ),
    n: Type.Optional(Type.Union([Type.Integer({ minimum: 1 }), Type.Null()], { description: "Only 1 (one job, one choice)" })),
    best_of: Type.Optional(Type.Union([Type.Integer({ minimum: 1 }), Type.Null()], { description: "Only 1" })),
    echo: Type.Optional(Type.Union([Type.Boolean(), Type.Null()], { description: "Only false" })),
    logprobs: Type.Optional(Type.Union([Type.Integer({ minimum: 0 }), Type.Null()], { description: "Only null: miners return text, not token probabilities" })),
    suffix: Type.Optional(Type.Union([Type.String(), Type.Null()], { description: "Only empty or null: GPT-2 models cannot insert" })),
    presence_penalty: Type.Optional(Type.Union([Type.Number(), Type.Null()], { description: "Only 0 (POST /v1/jobs has repetition_penalty)" })),
    frequency_penalty: Type.Optional(Type.Union([Type.Number(), Type.Null()], { description: "Only 0 (POST /v1/jobs has repetition_penalty)" })),
    user: Type.Optional(Type.String({ maxLength: 256, description: "Accepted and ignored" })),
  },
  {
    additionalProperties: false,
    "x-examples": {
      plain: { summary: "A completion", value: { model: "tiny-gpt2", prompt: "The GPU network", max_tokens: 32 } },
      stream: { summary: "Streamed, with usage at the end", value: { model: "tiny-gpt2", prompt: "Hi", max_tokens: 16, temperature: 0.7, stop: ["\n"], seed: 7, stream: true, stream_options: { include_usage: true } } },
    },
  },
);
export type CompletionBody = Static<typeof CompletionBodySchema>;

/** OpenAI's error shape, which these routes answer with (see problem.ts). */
const OpenAIErrorSchema = Type.Object(
  {
    error: Type.Object(
      {
        message: Type.String({ description: "What went wrong (the problem detail of the other routes)" }),
        type: Type.String({ description: "invalid_request_error, authentication_error, permission_error, not_found_error, rate_limit_error or server_error" }),
        code: Type.String({ description: "The stable error code, described at /problems/<code>" }),
        param: Type.Union([Type.String(), Type.Null()], { description: "The body field at fault, when one is" }),
      },
      { additionalProperties: true, description: "The error" },
    ),
  },
  { additionalProperties: true, description: "An error in OpenAI's shape (so SDKs raise AuthenticationError, RateLimitError, …)" },
);

const Usage = Type.Object(
  {
    prompt_tokens: Type.Integer({ description: "Tokens of the prompt" }),
    completion_tokens: Type.Integer({ description: "Tokens generated" }),
    total_tokens: Type.Integer({ description: "prompt_tokens + completion_tokens" }),
  },
  { description: "Token counts" },
);

const CompletionSchema = Type.Object(
  {
    id: Type.String({ description: "The job id: GET /v1/jobs/{id} and its download work on it" }),
    object: Type.Literal("text_completion", { description: "Always text_completion" }),
    created: Type.Integer({ description: "When the job was accepted, Unix seconds" }),
    model: Type.String({ description: "The model that generated the text" }),
    choices: Type.Array(
      Type.Object(
        {
          text: Type.String({ description: "The generated text (without the prompt)" }),
          index: Type.Integer({ description: "Always 0: one choice per completion" }),
          logprobs: Type.Null({ description: "Always null: miners return text, not token probabilities" }),
          finish_reason: Type.Union([Type.Literal("stop"), Type.Literal("length"), Type.Null()], { description: "length: max_tokens reached; stop: a stop sequence or the model ended; null in a stream's chunks before the last" }),
        },
        { additionalProperties: true },
      ),
      { description: "One choice" },
    ),
    usage: Type.Optional(Usage),
  },
  { additionalProperties: true },
);

const COMPLETION_STREAM_EXAMPLE = [
  'data: {"id":"job_abc123","object":"text_completion","created":1771063200,"model":"tiny-gpt2","choices":[{"text":" is","index":0,"logprobs":null,"finish_reason":null}]}',
  'data: {"id":"job_abc123","object":"text_completion","created":1771063200,"model":"tiny-gpt2","choices":[{"text":" fast","index":0,"logprobs":null,"finish_reason":"length"}]}',
  'data: {"id":"job_abc123","object":"text_completion","created":1771063200,"model":"tiny-gpt2","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}',
  "data: [DONE]",
].join("\n\n") + "\n\n";

const ModelListSchema = Type.Object(
  {
    object: Type.Literal("list", { description: "Always list" }),
    data: Type.Array(
      Type.Object(
        {
          id: Type.String({ description: "The model name, as a job's or completion's model" }),
          object: Type.Literal("model", { description: "Always model" }),
          created: Type.Integer({ description: "Always 0 (unknown)" }),
          owned_by: Type.String({ description: "Always aitbc" }),
          miners: Type.Integer({ description: "Connected, undrained miners that serve it, across all replicas" }),
          slots: Type.Integer({ description: "Their job slots in all" }),
          free_slots: Type.Integer({ description: "Slots not running a job now" }),
        },
        { additionalProperties: true },
      ),
      { description: "Every model some connected miner serves, by name" },
    ),
  },
  { additionalProperties: true },
);

const openaiErrors = { 401: OpenAIErrorSchema, 404: OpenAIErrorSchema, 409: OpenAIErrorSchema, 413: OpenAIErrorSchema, 422: OpenAIErrorSchema, 429: OpenAIErrorSchema, 502: OpenAIErrorSchema, 503: OpenAIErrorSchema };

/** OpenAI's defaults for what the body omits (what SDK users expect), mapped onto a job body. */
export function completionToJob(body: CompletionBody): SubmitJobBody {
  const refuse = (param: string, why: string): never => {
    throw new ValidationError(why, { field: param });
  };
  if ((body.n ?? 1) !== 1) refuse("n", "n must be 1: each completion here is one job with one choice (submit several requests for several)");
  if ((body.best_of ?? 1) !== 1) refuse("best_of", "best_of must be 1 here");
  if (body.echo === true) refuse("echo", "echo is not supported here");
  if (body.logprobs !== undefined && body.logprobs !== null) refuse("logprobs", "logprobs are not supported here: miners return text, not token probabilities");
  if (body.suffix !== undefined && body.suffix !== null && body.suffix !== "") refuse("suffix", "suffix (insertion) is not supported by GPT-2 models");
  if ((body.presence_penalty ?? 0) !== 0) refuse("presence_penalty", "presence_penalty is not supported here (use POST /v1/jobs with repetition_penalty)");
  if ((body.frequency_penalty ?? 0) !== 0) refuse("frequency_penalty", "frequency_penalty is not supported here (use POST /v1/jobs with repetition_penalty)");
  const stop = body.stop === undefined || body.stop === null ? [] : typeof body.stop === "string" ? [body.stop] : body.stop;
  return {
    model: body.model,
    input: typeof body.prompt === "string" ? body.prompt : body.prompt[0]!,
    parameters: {
      max_new_tokens: body.max_tokens ?? 16,
      temperature: body.temperature ?? 1,
      top_p: body.top_p ?? 1,
      // OpenAI samples from the whole distribution: no top-k, no repetition penalty.
      top_k: 0,
      repetition_penalty: 1,
      stop,
      seed: body.seed ?? randomInt(0, GENERATION_BOUNDS.seed.max),
    },
  };
}

function finishReason(job: JobRecord): "stop" | "length" {
  return job.result?.finishReason === "length" ? "length" : "stop";
}

function usageOf(job: JobRecord): { prompt_tokens: number; completion_tokens: number; total_tokens: number } {
  const u = job.result?.usage ?? { prompt_tokens: 0, completion_tokens: 0 };
  return { prompt_tokens: u.prompt_tokens, completion_tokens: u.completion_tokens, total_tokens: u.prompt_tokens + u.completion_tokens };
}

/** A job that ended without a result, as the error its completion answers. */
function notCompleted(job: JobRecord): AppError {
  if (job.status === "cancelled") return new AppError("job_cancelled", `job ${job.id} was cancelled`, { status: 409 });
  const why = job.error === null ? job.status : `${job.error.message} (${job.error.code})`;
  return new AppError(`job_${job.status}`, `job ${job.id} ended ${job.status.replace("_", " ")}: ${why}`, { status: 502, retryable: true });
}

/**
 * Resolves with the job once it is terminal: woken by its state changes here, by hints from
 * other replicas, and a periodic re-read (nothing is missed if a hint is).
 */
function untilTerminal(ctx: CoordinatorContext, tenant: string, jobId: string, signal: AbortSignal): Promise<JobRecord | null> {
  return new Promise((resolve, reject) => {
    const read = coalesced(async () => {
      const job = await ctx.store.getJob(tenant, jobId);
      if (job === null || isTerminal(job.status)) {
        done(job);
        return true;
      }
    });
    const check = async (): Promise<void> => {
      try {
        await read();
      } catch (err) {
        cleanup();
        reject(err instanceof Error ? err : new Error(errorMessage(err)));
      }
    };
    const unsubscribe = ctx.events.onJob(jobId, (e) => (isTerminal(e.type as JobRecord["status"]) ? void check() : undefined), () => undefined);
    const unsubscribeRemote = ctx.events.onJobRemote(jobId, () => void check());
    const timer = setInterval(() => void check(), 1_000);
    const onAbort = (): void => done(null);
    signal.addEventListener("abort", onAbort, { once: true });
    function cleanup(): void {
      unsubscribe();
      unsubscribeRemote();
      clearInterval(timer);
      signal.removeEventListener("abort", onAbort);
    }
    function done(job: JobRecord | null): void {
      cleanup();
      resolve(job);
    }
    void check();
  });
}

/**
 * The OpenAI-compatible surface, so existing SDKs and tools work unchanged:
 *
 *   POST /v1/completions       a normal job (same queue, leases, limits, tenants, estimates)
 *                              answered as a `text_completion`; the job id is the completion id
 *                              (GET /v1/jobs/{id} works on it). `stream: true` sends the text as
 *                              `data: {...}` chunks, then `data: [DONE]`. A client that goes away
 *                              cancels its job (`[openai] cancel_on_disconnect`); a replica that
 *                              shuts down closes its streams without cancelling anything.
 *   POST /v1/chat/completions  404: GPT-2 models have no chat template.
 *   GET  /v1/models            every model some connected miner serves, across the fleet, with
 *                              how many miners and free slots serve it.
 */
export function openaiRoutes(ctx: CoordinatorContext): FastifyPluginAsyncTypebox {
  return async (app) => {
    app.post(
      "/v1/completions",
      {
        schema: {
          summary: "OpenAI-compatible text completion",
          description: `OpenAI's completion body with OpenAI's defaults (max_tokens 16, temperature 1, top_p 1; no top-k, no repetition penalty). n, best_of other than 1, echo, logprobs, suffix and non-zero penalties are refused with a 422 naming the field. The completion is a normal job (same queue, limits, tenants, estimates; Idempotency-Key works) and its id is the job id.

Without \`stream\` the answer is one \`text_completion\` once the job ends. With \`stream: true\` it is \`text/event-stream\`: \`data: {…}\` chunks, each a \`text_completion\` whose \`choices[0].text\` appends to the text so far (the last has \`finish_reason\`), then, with \`stream_options.include_usage\`, a chunk with empty \`choices\` and \`usage\`, then \`data: [DONE]\`. A job that ends without a result sends \`data: {"error": {…}}\` before \`[DONE]\`. A client that disconnects cancels its job (\`[openai] cancel_on_disconnect\`). Errors use OpenAI's shape.`,
          tags: ["openai"],
          body: CompletionBodySchema,
          headers: IdempotencyHeadersSchema,
          response: {
            200: {
              description: "The completion (JSON), or with stream: true its chunks (text/event-stream)",
              content: {
                "application/json": { schema: CompletionSchema },
                "text/event-stream": { schema: Type.String({ description: "Server-Sent Events: data: lines, then data: [DONE]" }), example: COMPLETION_STREAM_EXAMPLE },
              },
            },
            ...openaiErrors,
          },
        },
      },
      async (request, reply) => {
        const tenant = tenantOf(request);
        const body = request.body;
        const jobBody = completionToJob(body);
        const { job, created } = await acceptJob(ctx, tenant, jobBody, request.headers["idempotency-key"], reply);
        if (created) {
          request.log.info({ jobId: job.id, model: job.model, tenant, stream: body.stream === true }, "completion accepted");
          ctx.metrics.submitted.inc();
        }
        const createdAt = Math.floor(job.createdAt / 1000);
        const chunk = (text: string, finish: "stop" | "length" | null): Static<typeof CompletionSchema> => ({
          id: job.id,
          object: "text_completion" as const,
          created: createdAt,
          model: job.model,
          choices: [{ text, index: 0, logprobs: null, finish_reason: finish }],
        });

        if (body.stream !== true) {
          const gone = new AbortController();
          let answered = false;
          // The response's close (the request's fires once its body is read): the client went away.
          reply.raw.on("close", () => {
            if (answered) return;
            gone.abort();
            if (ctx.config.openai.cancelOnDisconnect && !closing) void cancel(job.id, tenant, "client disconnected");
          });
          const done = await untilTerminal(ctx, tenant, job.id, gone.signal);
          answered = true;
          if (done === null) {
            if (gone.signal.aborted) return reply;
            throw new NotFoundError("job_not_found", "the job is gone");
          }
          if (done.status !== "completed" || done.result === null) throw notCompleted(done);
          const text = (await ctx.results.read(done.result.location)).toString("utf8");
          return { ...chunk(text, finishReason(done)), usage: usageOf(done) };
        }

        reply.hijack();
        const raw = reply.raw;
        raw.writeHead(200, SSE_HEADERS);
        const data = (payload: unknown): void => {
          raw.write(`data: ${typeof payload === "string" ? payload : JSON.stringify(payload)}\n\n`);
        };
        // What the client has: OpenAI's stream only appends, so a new attempt's text is sent only
        // from where it goes past what was sent (the same seed gives the same text again).
        let sent = "";
        let ended = false;
        let finished = false;
        const offer = (text: string): void => {
          if (ended || !text.startsWith(sent) || text.length === sent.length) return;
          data(chunk(text.slice(sent.length), null));
          sent = text;
        };
        const unsubscribeText = ctx.events.onJobText(job.id, () => {
          const live = ctx.events.liveText(job.id);
          if (live !== undefined) offer(live.text);
        });
        const gone = new AbortController();
        const end = (): void => {
          if (ended) return;
          ended = true;
          unsubscribeText();
          ctx.streams.remove(stream);
          gone.abort();
          raw.end();
        };
        const stream: OpenStream = { keyId: request.apiKey!.id, end };
        ctx.streams.add(stream);
        raw.on("close", () => {
          if (finished || ended) return;
          end();
          if (ctx.config.openai.cancelOnDisconnect && !closing) void cancel(job.id, tenant, "client disconnected from the stream");
        });
        const live = ctx.events.liveText(job.id);
        if (live !== undefined) offer(live.text);
        else ctx.events.wantText(job.id);
        try {
          const done = await untilTerminal(ctx, tenant, job.id, gone.signal);
          if (done === null || ended) return;
          finished = true;
          if (done.status === "completed" && done.result !== null) {
            const text = (await ctx.results.read(done.result.location)).toString("utf8");
            if (text.startsWith(sent)) data(chunk(text.slice(sent.length), finishReason(done)));
            else data({ error: { message: "a new attempt generated a different text than the one streamed; GET the job's download for the result", type: "server_error", code: "text_diverged" } });
            if (body.stream_options?.include_usage === true) data({ id: job.id, object: "text_completion", created: createdAt, model: job.model, choices: [], usage: usageOf(done) });
          } else {
            const err = notCompleted(done);
            data({ error: { message: err.message, type: "server_error", code: err.code } });
          }
          data("[DONE]");
        } catch (err) {
          request.log.warn({ err: errorMessage(err), jobId: job.id }, "completion stream failed");
          data({ error: { message: "the coordinator lost track of the job; GET /v1/jobs/{id} for its state", type: "server_error", code: "unavailable" } });
        } finally {
          end();
        }
        return reply;
      },
    );

    app.post("/v1/chat/completions", { schema: { summary: "Not available: GPT-2 models have no chat template", description: "Always 404 chat_not_supported: use POST /v1/completions with a prompt.", tags: ["openai"], response: { 404: OpenAIErrorSchema } } }, async () => {
      throw new NotFoundError(
        "chat_not_supported",
        "chat completions need a model with a chat template; the GPT-2 models this network serves have none: use POST /v1/completions with a prompt",
      );
    });

    app.get("/v1/models", { schema: { summary: "Models the connected fleet serves (OpenAI's list shape)", tags: ["openai"], response: { 200: ModelListSchema, 401: OpenAIErrorSchema, 429: OpenAIErrorSchema } } }, async () => {
      const now = ctx.now();
      const [connected, leases] = await Promise.all([ctx.store.listConnectedMiners(now - 3 * ctx.config.scheduler.heartbeatMs), ctx.store.listActiveLeases(10_000)]);
      // Drained miners (by themselves or an operator) take no jobs: not counted.
      const miners = connected.filter((m) => !m.draining && !m.drained);
      const leased = new Map<string, number>();
      for (const j of leases) if (j.minerId !== null) leased.set(j.minerId, (leased.get(j.minerId) ?? 0) + 1);
      const byModel = new Map<string, { miners: number; slots: number; busy: number }>();
      for (const m of miners) {
        const busy = leased.get(m.id) ?? 0;
        for (const model of m.models) {
          const e = byModel.get(model) ?? { miners: 0, slots: 0, busy: 0 };
          e.miners++;
          e.slots += m.slots;
          e.busy += Math.min(busy, m.slots);
          byModel.set(model, e);
        }
      }
      return {
        object: "list" as const,
        data: [...byModel.entries()]
          .sort(([a], [b]) => a.localeCompare(b))
          .map(([id, e]) => ({ id, object: "model" as const, created: 0, owned_by: "aitbc", miners: e.miners, slots: e.slots, free_slots: Math.max(0, e.slots - e.busy) })),
      };
    });

    let closing = false;
    app.addHook("preClose", async () => {
      closing = true;
    });

    async function cancel(jobId: string, tenant: string, why: string): Promise<void> {
      try {
        const r = await ctx.store.requestCancel(tenant, jobId, ctx.now());
        app.log.info({ jobId, outcome: r, why }, "completion cancelled");
      } catch (err) {
        app.log.warn({ jobId, err: errorMessage(err) }, "cancelling an abandoned completion failed");
      }
    }
  };
}
