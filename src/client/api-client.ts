import { type Static, type TSchema } from "@sinclair/typebox";
import { FormatRegistry } from "@sinclair/typebox";
import { Value } from "@sinclair/typebox/value";
import { Backoff, sleep } from "../common/backoff.js";
import {
  CancelResponseSchema,
  FileResponseSchema,
  JobStatusSchema,
  ListJobsResponseSchema,
  SubmitJobResponseSchema,
  type JobStatus,
  type SubmitJobBody,
  type SubmitJobResponse,
} from "../protocol/jobs.js";
import { isTerminal, JOB_STATES, type JobState } from "../protocol/version.js";
import { ApiError } from "./api-error.js";
import { SseParser } from "./sse-parser.js";

export type ListJobsResponse = Static<typeof ListJobsResponseSchema>;
export type CancelResponse = Static<typeof CancelResponseSchema>;
export type FileResponse = Static<typeof FileResponseSchema>;

/** What {@link ApiClient.followJob} yields. */
export type JobStreamEvent =
  /** The job as GET /v1/jobs/{id} shows it, at the start of every connection. */
  | { type: "snapshot"; job: JobStatus }
  /** A change from the job's event log: queued, assigned, running, requeued, cancel_requested, or a terminal state. */
  | { type: "state"; state: string; seq: number; data: Record<string, unknown> }
  | { type: "progress"; progress: number; tokens: number; maxTokens: number; tokensPerSecond: number; attempt: number }
  /** Generated text as it comes: the attempt's text is now `text.slice(0, index) + text`. */
  | { type: "token"; attempt: number; index: number; text: string }
  /** A new attempt generates the text again (the next token starts at index 0). */
  | { type: "text_restart"; attempt: number }
  /** The stream dropped; the next connection resumes after `lastEventId` in `delayMs`. */
  | { type: "reconnecting"; attempt: number; delayMs: number; reason: string };

export interface ApiClientOptions {
  /** Base URL of the coordinator, e.g. http://127.0.0.1:8080. */
  url: string;
  /** A client key (aitbc_ck_…). */
  key: string;
  /** Reconnects in a row without receiving an event before followJob gives up. Default 20. */
  maxReconnects?: number;
  /** Delays between reconnects. Default base 250 ms, cap 5 s. */
  backoff?: Backoff;
}

// The status schema's times carry format "date-time"; TypeBox checks formats only once registered.
if (!FormatRegistry.Has("date-time")) FormatRegistry.Set("date-time", (v) => !Number.isNaN(Date.parse(v)));

const STATES = new Set<string>(JOB_STATES);

/**
 * The client REST API over global fetch: one typed method per endpoint, each answer checked
 * against the protocol's schema, and every non-2xx turned into an {@link ApiError} carrying the
 * problem+json `code` and `detail`. `followJob` reads the job's Server-Sent Events and resumes
 * with Last-Event-ID when the connection drops.
 */
export class ApiClient {
  readonly baseUrl: string;
  private readonly key: string;
  private readonly maxReconnects: number;
  private readonly backoff: Backoff;

  constructor(options: ApiClientOptions) {
    this.baseUrl = options.url.replace(/\/+$/, "");
    this.key = options.key;
    this.maxReconnects = options.maxReconnects ?? 20;
    this.backoff = options.backoff ?? new Backoff({ baseMs: 250, maxMs: 5000 });
  }

  async submitJob(body: SubmitJobBody, options: { idempotencyKey?: string } = {}): Promise<SubmitJobResponse> {
    const headers: Record<string, string> = { "content-type": "application/json" };
    if (options.idempotencyKey !== undefined) headers["idempotency-key"] = options.idempotencyKey;
    const res = await this.request("POST", "/v1/jobs", { headers, body: JSON.stringify(body) });
    return this.json(res, SubmitJobResponseSchema);
  }

  /**
   * POST /v1/files: the text as the raw body; its `file_id` can be a job's `input`. A file over
   * the coordinator's limit gets 413 naming it. A server that answers early and resets the
   * connection while the body is still being sent (an older coordinator, some proxies) loses
   * that answer: the error then says what most likely happened instead of "unreachable".
   */
  async uploadFile(content: string | Uint8Array): Promise<FileResponse> {
    let res: Response;
    try {
      res = await this.request("POST", "/v1/files", { headers: { "content-type": "text/plain; charset=utf-8" }, body: content });
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 0 && connectionCut(err.cause))) throw err;
      const bytes = typeof content === "string" ? Buffer.byteLength(content) : content.byteLength;
      throw new ApiError(
        0,
        "upload_cut",
        `the coordinator at ${this.baseUrl} closed the connection while ${bytes} bytes were being uploaded: most likely the file is larger than it accepts ([limits] max_file_size)`,
        { cause: err },
      );
    }
    return this.json(res, FileResponseSchema);
  }

  async getJob(jobId: string): Promise<JobStatus> {
    return this.json(await this.request("GET", `/v1/jobs/${encodeURIComponent(jobId)}`), JobStatusSchema);
  }

  async listJobs(query: { status?: JobState; limit?: number; cursor?: string } = {}): Promise<ListJobsResponse> {
    return this.json(await this.request("GET", `/v1/jobs${queryString(query)}`), ListJobsResponseSchema);
  }

  /** Finished jobs completed between `from` and `to` (YYYY-MM-DD or ISO times, inclusive). */
  async history(query: { from: string; to: string; limit?: number; cursor?: string }): Promise<ListJobsResponse> {
    return this.json(await this.request("GET", `/v1/jobs/history${queryString(query)}`), ListJobsResponseSchema);
  }

  async cancelJob(jobId: string): Promise<CancelResponse> {
    return this.json(await this.request("DELETE", `/v1/jobs/${encodeURIComponent(jobId)}`), CancelResponseSchema);
  }

  /** The result as stored: JSON (`output` inside) or plain text, per the job's output format. */
  async download(jobId: string): Promise<{ contentType: string; body: Buffer }> {
    const res = await this.request("GET", `/v1/jobs/${encodeURIComponent(jobId)}/download`);
    return { contentType: res.headers.get("content-type") ?? "", body: Buffer.from(await res.arrayBuffer()) };
  }

  /** The generated text of a completed job, whatever its output format. */
  async resultText(jobId: string): Promise<string> {
    const { contentType, body } = await this.download(jobId);
    if (!contentType.startsWith("application/json")) return body.toString("utf8");
    const parsed = parseJson(body.toString("utf8"));
    if (typeof parsed === "object" && parsed !== null && typeof (parsed as { output?: unknown }).output === "string") {
      return (parsed as { output: string }).output;
    }
    throw new ApiError(200, "bad_response", "the coordinator's download has no output text");
  }

  /**
   * Follows GET /v1/jobs/{id}/events until the job reaches a terminal state (the server then ends
   * the stream) or `signal` aborts (the iterator then just ends). A dropped connection, a 5xx or a
   * 429 is retried with backoff and Last-Event-ID, so no state change is missed or repeated; a
   * 4xx such as 401 or 404 throws.
   */
  async *followJob(jobId: string, options: { signal?: AbortSignal; lastEventId?: string } = {}): AsyncGenerator<JobStreamEvent> {
    const { signal } = options;
    let lastEventId = options.lastEventId;
    let failures = 0;
    let terminal = false;
    // A function, so TypeScript does not narrow `aborted` once and for all.
    const aborted = (): boolean => signal?.aborted === true;
    this.backoff.reset();
    while (!aborted()) {
      let reason: string;
      try {
        const headers: Record<string, string> = { accept: "text/event-stream" };
        if (lastEventId !== undefined) headers["last-event-id"] = lastEventId;
        const res = await this.request("GET", `/v1/jobs/${encodeURIComponent(jobId)}/events`, { headers, ...(signal === undefined ? {} : { signal }) });
        if (res.body === null) throw new ApiError(res.status, "bad_response", "the event stream has no body");
        const parser = new SseParser();
        const decoder = new TextDecoder();
        for await (const chunk of res.body as AsyncIterable<Uint8Array>) {
          for (const m of parser.push(decoder.decode(chunk, { stream: true }))) {
            const event = toStreamEvent(m.event, m.data, m.id);
            if (event === undefined) continue;
            if (m.id !== undefined) lastEventId = m.id;
            failures = 0;
            this.backoff.reset();
            if (event.type === "state" && STATES.has(event.state) && isTerminal(event.state as JobState)) terminal = true;
            if (event.type === "snapshot" && isTerminal(event.job.status)) terminal = true;
            yield event;
          }
        }
        if (terminal) return;
        reason = "the event stream ended before the job finished";
      } catch (err) {
        if (aborted()) return;
        if (err instanceof ApiError && !err.retryable) throw err;
        reason = err instanceof ApiError ? err.oneLine() : "the event stream dropped";
        if (terminal) return;
      }
      failures += 1;
      if (failures > this.maxReconnects) {
        throw new ApiError(0, "stream_lost", `lost the job's event stream after ${this.maxReconnects} reconnects: ${reason}`);
      }
      const delayMs = this.backoff.next();
      yield { type: "reconnecting", attempt: failures, delayMs, reason };
      try {
        await sleep(delayMs, signal);
      } catch {
        return;
      }
    }
  }

  private async request(method: string, route: string, init: { headers?: Record<string, string>; body?: string | Uint8Array; signal?: AbortSignal } = {}): Promise<Response> {
    let res: Response;
    try {
      res = await fetch(`${this.baseUrl}${route}`, {
        method,
        headers: { authorization: `Bearer ${this.key}`, ...init.headers },
        ...(init.body === undefined ? {} : { body: init.body }),
        ...(init.signal === undefined ? {} : { signal: init.signal }),
      });
    } catch (err) {
      if (init.signal?.aborted === true) throw err;
      const cause = (err as { cause?: { code?: unknown; message?: unknown } }).cause;
      const why = typeof cause?.code === "string" ? cause.code : typeof cause?.message === "string" ? cause.message : "network error";
      throw new ApiError(0, "unreachable", `cannot reach the coordinator at ${this.baseUrl}: ${why}${tlsHint(why)}`, { retryable: true, cause: err });
    }
    if (res.ok) return res;
    throw await problemOf(res);
  }

  private async json<S extends TSchema>(res: Response, schema: S): Promise<Static<S>> {
    const parsed = parseJson(await res.text());
    if (!Value.Check(schema, parsed)) {
      const first = Value.Errors(schema, parsed).First();
      throw new ApiError(res.status, "bad_response", `unexpected answer from the coordinator: ${first === undefined ? "" : `${first.path} ${first.message}`}`.trim());
    }
    return parsed;
  }
}

/** A connection the peer closed or reset under a request being sent (not one that never opened). */
function connectionCut(err: unknown): boolean {
  for (let e: unknown = err, depth = 0; typeof e === "object" && e !== null && depth < 4; e = (e as { cause?: unknown }).cause, depth++) {
    const code = (e as { code?: unknown }).code;
    if (code === "EPIPE" || code === "ECONNRESET" || code === "UND_ERR_SOCKET") return true;
  }
  return false;
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return undefined;
  }
}

function queryString(q: Record<string, string | number | undefined>): string {
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(q)) if (v !== undefined) params.set(k, String(v));
  const s = params.toString();
  return s === "" ? "" : `?${s}`;
}

async function problemOf(res: Response): Promise<ApiError> {
  const text = await res.text().catch(() => "");
  const body = parseJson(text);
  const retryable = res.status === 429 || res.status >= 500;
  if (typeof body === "object" && body !== null) {
    const p = body as { code?: unknown; detail?: unknown };
    if (typeof p.code === "string" && typeof p.detail === "string") {
      return new ApiError(res.status, p.code, p.detail, { retryable, details: body as Record<string, unknown> });
    }
  }
  return new ApiError(res.status, "http_error", res.statusText === "" ? `HTTP ${res.status}` : res.statusText, { retryable });
}

function num(v: unknown): number {
  return typeof v === "number" && Number.isFinite(v) ? v : 0;
}

function toStreamEvent(event: string, data: string, id: string | undefined): JobStreamEvent | undefined {
  const parsed = parseJson(data);
  if (typeof parsed !== "object" || parsed === null) return undefined;
  const d = parsed as Record<string, unknown>;
  if (event === "snapshot") return Value.Check(JobStatusSchema, d) ? { type: "snapshot", job: d } : undefined;
  if (event === "progress") {
    return { type: "progress", progress: num(d.progress), tokens: num(d.tokens), maxTokens: num(d.max_tokens), tokensPerSecond: num(d.tokens_per_second), attempt: num(d.attempt) };
  }
  if (event === "token") return typeof d.text === "string" ? { type: "token", attempt: num(d.attempt), index: num(d.index), text: d.text } : undefined;
  if (event === "text_restart") return { type: "text_restart", attempt: num(d.attempt) };
  const seq = Number(id);
  return { type: "state", state: event, seq: Number.isInteger(seq) ? seq : 0, data: d };
}

/** Node's codes for a certificate chain it cannot verify (a private CA, a self-signed certificate). */
const UNTRUSTED_CERT_CODES = new Set(["DEPTH_ZERO_SELF_SIGNED_CERT", "SELF_SIGNED_CERT_IN_CHAIN", "UNABLE_TO_VERIFY_LEAF_SIGNATURE", "UNABLE_TO_GET_ISSUER_CERT_LOCALLY"]);

/** What to do about a TLS failure, for the one-line error; "" for anything else. */
function tlsHint(code: string): string {
  if (UNTRUSTED_CERT_CODES.has(code)) return " (the coordinator's TLS certificate is not trusted: set NODE_EXTRA_CA_CERTS to its CA's PEM file)";
  if (code === "ERR_TLS_CERT_ALTNAME_INVALID") return " (the coordinator's TLS certificate does not name this host: use a name it lists in subjectAltName)";
  if (code === "CERT_HAS_EXPIRED") return " (the coordinator's TLS certificate has expired)";
  return "";
}
