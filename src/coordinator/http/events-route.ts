import { createHash } from "node:crypto";
import type { FastifyPluginAsyncTypebox } from "@fastify/type-provider-typebox";
import { Type } from "@sinclair/typebox";
import { coalesced } from "../../common/coalesced.js";
import { AppError, NotFoundError, errorMessage } from "../../common/errors.js";
import { JobIdParamsSchema, ProblemSchema } from "../../protocol/jobs.js";
import { JOB_STATES, isTerminal, type JobState } from "../../protocol/version.js";
import type { CoordinatorContext } from "../context.js";
import type { FastifyReply, FastifyRequest } from "fastify";
import type { JobEvent, JobRecord } from "../store/job-store.js";
import type { ProgressEvent } from "../store/job-events.js";
import { tenantOf } from "./auth-hook.js";
import { jobView, withLiveProgress } from "./job-view.js";
import { SSE_HEADERS, type OpenStream } from "./stream-registry.js";

const KEEPALIVE_MS = 15_000;
/** Outputs up to this size are read at completion to send the text the client has not seen. */
const COMPLETION_TEXT_MAX_BYTES = 8 * 1024 * 1024;

/**
 * GET /v1/jobs/{id}/events — Server-Sent Events, so a client follows a job without polling:
 *
 *   event: snapshot   the job's status now (as GET /v1/jobs/{id})
 *   event: <state>    id: <seq>; each state change from the job's event log (queued, assigned,
 *                     running, requeued, cancel_requested, completed, failed, …)
 *   event: progress   live progress of the running attempt (tokens, max_tokens, tokens/s)
 *   event: token      {attempt, index, text}: the generated text as it comes; the text is now
 *                     text.slice(0, index) + text. A client that joins (or reconnects) while the
 *                     job runs first gets the text so far in one token event at index 0
 *   event: text_restart  a new attempt generates the text again: the next token starts at 0
 *   event: completed  also carries the result summary (finish_reason, usage, output_sha256,
 *                     download_url); the token events before it add up to the output exactly
 *
 * A reconnecting client sends Last-Event-ID (or ?after=) and gets the changes it missed. The
 * stream ends after the terminal state, when the coordinator closes, and when its key is revoked.
 * A key holds at most `[limits] max_streams_per_key` streams at once (429 past it).
 */
/** The events a job's stream sends, for /docs (the README's table, from the same source). */
export const JOB_EVENT_NAMES = ["snapshot", ...JOB_STATES, "requeued", "cancel_requested", "progress", "token", "text_restart"] as const;

const EVENTS_EXAMPLE = [
  'event: snapshot\ndata: {"job_id":"job_abc123","status":"running","model":"tiny-gpt2","progress":12.5,"miner_id":"miner_xyz789","attempt":1,"result":null,"...":"the rest of GET /v1/jobs/{id}"}',
  'id: 3\nevent: running\ndata: {"job_id":"job_abc123","status":"running","at":"2026-02-13T10:01:00.000Z","attempt":1,"miner_id":"miner_xyz789"}',
  'event: token\ndata: {"job_id":"job_abc123","attempt":1,"index":0,"text":"The GPU network"}',
  'event: progress\ndata: {"job_id":"job_abc123","attempt":1,"progress":37.5,"tokens":24,"max_tokens":64,"tokens_per_second":250.3}',
  'event: token\ndata: {"job_id":"job_abc123","attempt":1,"index":15,"text":" is"}',
  'id: 4\nevent: requeued\ndata: {"job_id":"job_abc123","status":"requeued","at":"2026-02-13T10:01:09.000Z","attempt":1,"miner_id":"miner_xyz789","reason":"miner disconnected"}',
  'event: text_restart\ndata: {"job_id":"job_abc123","attempt":2,"reason":"a new attempt generates the text again"}',
  'event: token\ndata: {"job_id":"job_abc123","attempt":2,"index":0,"text":"The GPU network is"}',
  'id: 7\nevent: completed\ndata: {"job_id":"job_abc123","status":"completed","at":"2026-02-13T10:01:30.000Z","attempt":2,"miner_id":"miner_xyz789","result":{"download_url":"/v1/jobs/job_abc123/download","format":"json","output_sha256":"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08","output_bytes":18,"finish_reason":"length","usage":{"prompt_tokens":3,"completion_tokens":64},"tokens_per_second":251.2,"destination":"local","available":true}}',
].join("\n\n") + "\n\n";

/** The description and the text/event-stream response of a job's event stream, for its route schema. */
export function jobEventStreamDoc(who: string): { description: string; response: Record<number, unknown> } {
  return {
    description: `${who}

Server-Sent Events (\`text/event-stream\`), one JSON object per \`data:\` line. A reconnecting client sends \`Last-Event-ID\` (or \`?after=<seq>\`) and gets the state changes it missed. The stream ends after the terminal state, when the coordinator closes, and when the key is revoked; a comment line \`: keepalive\` comes every 15 s.

| event | id | data | when |
|---|---|---|---|
| \`snapshot\` | | the job as GET /v1/jobs/{id} | first, on every connection |
| \`queued\` | seq | job_id, status, at, model, priority, retry_of? | the job was accepted |
| \`assigned\`, \`running\` | seq | job_id, status, at, attempt, miner_id | a miner took it / started it |
| \`requeued\` | seq | job_id, status, at, attempt, miner_id, reason | the attempt ended without a result; the job waits for another |
| \`cancel_requested\` | seq | job_id, status, at, attempt, miner_id | a cancel reached a running job |
| \`progress\` | | job_id, attempt, progress (0–100), tokens, max_tokens, tokens_per_second | while it runs |
| \`token\` | | job_id, attempt, index, text | the generated text: it is now \`text.slice(0, index) + text\`; a client joining a running job first gets the text so far at index 0 |
| \`text_restart\` | | job_id, attempt, reason | a new attempt generates the text again: the next \`token\` starts at index 0 |
| \`completed\` | seq | job_id, status, at, attempt, miner_id, result (as in the job status: download_url, format, output_sha256, output_bytes, finish_reason, usage, tokens_per_second, destination, available) | the end; the \`token\` events before it add up to the output exactly |
| \`failed\`, \`timed_out\`, \`cancelled\`, \`expired\` | seq | job_id, status, at, attempt, miner_id, error? ({code, message}) | the end without a result |

A key holds at most \`[limits] max_streams_per_key\` streams (429 \`too_many_streams\` past it).`,
    response: {
      200: {
        description: "The event stream (see the table above)",
        content: { "text/event-stream": { schema: { type: "string", description: "Server-Sent Events" }, example: EVENTS_EXAMPLE } },
      },
      401: ProblemSchema,
      404: ProblemSchema,
      429: ProblemSchema,
    },
  };
}

/** `?after=<seq>` of both job event streams. */
export const AfterQuery = Type.Object(
  { after: Type.Optional(Type.Integer({ minimum: 0, description: "Send the state changes after this sequence number (the SSE id); Last-Event-ID does the same", examples: [3] })) },
  { additionalProperties: false },
);

export function eventsRoute(ctx: CoordinatorContext): FastifyPluginAsyncTypebox {
  return async (app) => {
    // Open streams end when the coordinator closes: clients reconnect with Last-Event-ID.
    app.addHook("preClose", async () => ctx.streams.endAll());
    app.get(
      "/v1/jobs/:job_id/events",
      {
        schema: {
          summary: "Follow a job (Server-Sent Events)",
          tags: ["jobs"],
          params: JobIdParamsSchema,
          querystring: AfterQuery,
          ...jobEventStreamDoc("Follow one of this tenant's jobs: its state changes, progress and generated text as they happen."),
        },
      },
      async (request, reply) => {
        const after = request.query.after;
        await followJob(ctx, request, reply, request.params.job_id, { tenant: tenantOf(request), text: true, ...(after === undefined ? {} : { after }) });
      },
    );
  };
}

/** Whose job a stream may follow and whether it carries the generated text. */
export interface FollowOptions {
  /** The tenant whose job it must be (another's is 404, as if it did not exist), or null for any (an operator). */
  tenant: string | null;
  /** Token events and the completion text (false: state changes and progress only). */
  text: boolean;
  after?: number;
}

/**
 * Streams one job's changes over SSE (see eventsRoute for the events): the client's stream and
 * the operator's (GET /v1/admin/jobs/{id}/events, all tenants, text only with [admin] show_outputs).
 */
export async function followJob(ctx: CoordinatorContext, request: FastifyRequest, reply: FastifyReply, jobId: string, opts: FollowOptions): Promise<void> {
  const keyId = request.apiKey!.id;
  const lastId = Number(request.headers["last-event-id"] ?? opts.after ?? 0);
  let after = Number.isInteger(lastId) && lastId > 0 ? lastId : 0;
  // Subscribe first, then read the job with its log (one round trip), so nothing falls between
  // the two: what comes before the stream is open waits in `buffered` or is re-read after.
  const buffered: JobEvent[] = [];
  let replaying = true;
  let opened = false;
  let hintedDuringReplay = false;
  // Hints of a completion ask for the job with the log: the completed event's result summary is then read with it.
  let hintedCompletion = false;
  const unsubscribe = ctx.events.onJob(
    jobId,
    (e) => (replaying ? buffered.push(e) : sendChange(e)),
    // Progress before the stream is open is in the snapshot (its live progress).
    (p) => {
      if (opened) sendProgress(p);
    },
  );
  // Pieces during the replay are in the text-so-far sent after it.
  const unsubscribeText = ctx.events.onJobText(jobId, (t) => {
    if (!replaying) serial(() => (ended ? undefined : sendText(t.attempt, t.index, t.delta)));
  });
  // Changes another replica commits arrive as hints: re-read the log past what was sent. A hint
  // of an event already sent (the replay had it) needs no read; hints that come while a read is
  // in flight share one more read after it; a hint during the replay (whose read may have come
  // before the change) gets one read after it.
  const unsubscribeRemote = ctx.events.onJobRemote(jobId, (change) => {
    if (change !== undefined && change.seq <= after) return;
    if (change?.type === "completed") hintedCompletion = true;
    if (replaying) hintedDuringReplay = true;
    else rereadQuietly();
  });
  const unsubscribeAll = (): void => {
    unsubscribe();
    unsubscribeText();
    unsubscribeRemote();
  };
  let opening: { job: JobRecord | null; events: JobEvent[] };
  try {
    opening = await ctx.store.jobWithEvents(jobId, after);
  } catch (err) {
    unsubscribeAll();
    throw err;
  }
  const job = opening.job;
  if (job === null || (opts.tenant !== null && job.tenant !== opts.tenant)) {
    unsubscribeAll();
    throw new NotFoundError("job_not_found", "no such job");
  }
  if (!ctx.streams.hasRoom(keyId)) {
    unsubscribeAll();
    void reply.header("Retry-After", "5");
    throw new AppError("too_many_streams", `this API key already has ${ctx.config.limits.maxStreamsPerKey} event streams open ([limits] max_streams_per_key)`, {
      status: 429,
      retryable: true,
    });
  }
  /** The job as last read with its log: a completed one carries the result the completed event sums up. */
  let latest: JobRecord = job;

  reply.hijack();
  const raw = reply.raw;
  raw.writeHead(200, {
    ...SSE_HEADERS,
    ...Object.fromEntries(
      ["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"].map((h) => [h, String(reply.getHeader(h) ?? "")]),
    ),
  });
  // HEAD gets the stream's headers only: Node sends them at end(), so an open stream would hang.
  if (request.method === "HEAD") {
    unsubscribeAll();
    raw.end();
    return;
  }
  opened = true;
  const write = (event: string, data: unknown, id?: number): void => {
    raw.write(`${id === undefined ? "" : `id: ${id}\n`}event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
  };
  let ended = false;
  const end = (): void => {
    if (ended) return;
    ended = true;
    ctx.streams.remove(stream);
    unsubscribeAll();
    clearInterval(keepalive);
    raw.end();
  };
  // The text this client has, and of which attempt.
  let textAttempt: number | undefined;
  let clientText = "";
  const sendText = (attempt: number, index: number, delta: string): void => {
    if (!opts.text) return;
    if (attempt !== textAttempt) {
      if (textAttempt !== undefined) write("text_restart", { job_id: job.id, attempt, reason: "a new attempt generates the text again" });
      textAttempt = attempt;
      clientText = "";
    }
    if (index > clientText.length) {
      // A piece past what this client has: the whole text known here instead.
      const live = ctx.events.liveText(job.id);
      if (live === undefined || live.attempt !== attempt) return;
      index = 0;
      delta = live.text;
    }
    if (index === clientText.length && delta === "") return;
    write("token", { job_id: job.id, attempt, index, text: delta });
    clientText = clientText.slice(0, index) + delta;
  };
  /**
   * Before `completed`: the part of the output the client has not seen (or, when what it has
   * is not the output's beginning, all of it again), so its token events add up to the
   * output exactly. Returns the result summary for the completed event.
   */
  const finishText = async (): Promise<Record<string, unknown>> => {
    const current = latest.status === "completed" ? latest : await ctx.store.getJobById(job.id);
    if (current === null) return {};
    const result = current.result;
    // A client that already holds exactly the output (its sha256) is sent nothing more: the
    // output is not read back from the result store only to find that.
    const holdsOutput = textAttempt === current.attempt && result !== null && Buffer.byteLength(clientText) === result.bytes && createHash("sha256").update(clientText).digest("hex") === result.sha256;
    if (opts.text && !holdsOutput && result !== null && result.removed === undefined && result.bytes <= COMPLETION_TEXT_MAX_BYTES) {
      const output = (await ctx.results.read(result.location)).toString("utf8");
      if (textAttempt === current.attempt && output.startsWith(clientText)) sendText(current.attempt, clientText.length, output.slice(clientText.length));
      else sendText(current.attempt, 0, output);
    }
    return { result: jobView(current).result };
  };
  // Writes go in order through one chain: some need a read first (the completed summary).
  let chain: Promise<void> = Promise.resolve();
  const serial = (fn: () => void | Promise<void>): void => {
    chain = chain.then(fn).catch((err: unknown) => {
      request.log.warn({ err: errorMessage(err), jobId: job.id }, "event stream write failed");
    });
  };
  const sendChange = (e: JobEvent): void => {
    serial(async () => {
      if (ended || e.seq <= after) return;
      after = e.seq;
      let data: Record<string, unknown> = { job_id: e.jobId, status: e.type, at: new Date(e.at).toISOString(), ...e.data };
      if (e.type === "completed") data = { ...data, ...(await finishText()) };
      if (ended) return;
      write(e.type, data, e.seq);
      if (isTerminal(e.type as JobState)) end();
    });
  };
  const sendProgress = (p: ProgressEvent): void => {
    if (ended) return;
    write("progress", {
      job_id: p.jobId,
      attempt: p.attempt,
      progress: Math.round(p.progress * 10) / 10,
      tokens: p.tokens,
      max_tokens: p.maxTokens,
      tokens_per_second: Math.round(p.tokensPerSecond * 10) / 10,
    });
  };
  const reread = coalesced(async () => {
    if (ended) return true;
    if (hintedCompletion) {
      hintedCompletion = false;
      const r = await ctx.store.jobWithEvents(job.id, after);
      if (r.job !== null) latest = r.job;
      for (const e of r.events) sendChange(e);
      return;
    }
    for (const e of await ctx.store.listEvents(job.id, after)) sendChange(e);
  });
  // A failed read: the next hint, or the periodic resync, reads again.
  function rereadQuietly(): void {
    void reread().catch(() => undefined);
  }
  const stream: OpenStream = { keyId, end };
  ctx.streams.add(stream);
  const keepalive = setInterval(() => raw.write(": keepalive\n\n"), KEEPALIVE_MS);
  request.raw.on("close", end);

  write("snapshot", jobView(withLiveProgress(job, ctx.events)));
  const replayed = opening.events;
  for (const e of replayed) sendChange(e);
  // Then the text so far, in one event, unless the log already ends the job (completed sends it whole).
  if (!replayed.some((e) => isTerminal(e.type as JobState))) {
    const live = ctx.events.liveText(job.id);
    if (live !== undefined && live.attempt >= job.attempt) serial(() => sendText(live.attempt, 0, live.text));
    else if (!isTerminal(job.status) && opts.text) ctx.events.wantText(job.id);
  }
  replaying = false;
  for (const e of buffered) sendChange(e);
  if (hintedDuringReplay) rereadQuietly();
  // A job already ended when read (its terminal event at or before `after`): nothing more will come.
  if (isTerminal(job.status)) serial(() => end());
}
