import type { FastifyError, FastifyReply, FastifyRequest } from "fastify";
import { AppError } from "../../common/errors.js";
import type { Logger } from "../../common/logger.js";
import { problemPath } from "./problem-codes.js";

declare module "fastify" {
  interface FastifyInstance {
    /** Prefix that makes a problem `type` absolute: `[server] public_url`, or "" to leave it relative. */
    problemBase?: string;
  }
}

/**
 * Every error leaves as application/problem+json (RFC 9457) with a stable `code`:
 * 400 malformed request, 401 key, 404 unknown job or route, 409 state conflict, 413 body too
 * large, 415 media type, 422 schema/validation, 429 rate limit, 503 storage unavailable (with
 * Retry-After), 500 only for our own faults (logged, never with a stack trace to the client).
 * The `type` is the page this coordinator serves about the code (GET /problems/<code>, from
 * problem-codes.ts): relative, or absolute under `[server] public_url` when that is set.
 */
export interface Problem {
  type: string;
  title: string;
  status: number;
  code: string;
  detail: string;
  retryable?: boolean;
  errors?: { path: string; message: string }[];
  [extra: string]: unknown;
}

const TITLES: Record<number, string> = {
  400: "Invalid request",
  401: "Unauthorized",
  403: "Forbidden",
  404: "Not found",
  405: "Method not allowed",
  409: "Conflict",
  413: "Payload too large",
  415: "Unsupported media type",
  422: "Validation error",
  429: "Rate limited",
  500: "Server error",
  503: "Service unavailable",
};

export function problem(status: number, code: string, detail: string, extra: Record<string, unknown> = {}): Problem {
  // Extra fields come first so that a detail named like a standard member (e.g. a job's
  // `status`) can never replace the HTTP status or the code.
  return { ...extra, type: problemPath(code), title: TITLES[status] ?? "Error", status, code, detail };
}

/** Routes whose errors take OpenAI's shape, so OpenAI SDKs surface them (the status codes stay ours). */
const OPENAI_PATHS = /^\/v1\/(completions|chat\/completions|models)(\/|\?|$)/;

function openaiType(status: number): string {
  if (status === 401) return "authentication_error";
  if (status === 403) return "permission_error";
  if (status === 404) return "not_found_error";
  if (status === 429) return "rate_limit_error";
  if (status >= 500) return "server_error";
  return "invalid_request_error";
}

export function sendProblem(reply: FastifyReply, p: Problem): FastifyReply {
  if (OPENAI_PATHS.test(reply.request.url)) {
    const param = typeof p.field === "string" ? p.field : (p.errors?.[0]?.path.replace(/^body\//, "").split("/")[0] ?? null);
    return reply
      .code(p.status)
      .type("application/json")
      .send({ error: { message: p.detail, type: openaiType(p.status), code: p.code, param } });
  }
  const base = reply.server.problemBase ?? "";
  const type = base !== "" && p.type.startsWith("/") ? `${base}${p.type}` : p.type;
  return reply.code(p.status).type("application/problem+json").send({ ...p, type });
}

function fromFastifyError(err: FastifyError): Problem | undefined {
  if (err.validation !== undefined) {
    const ctx = err.validationContext ?? "body";
    // An unknown property is named in the path, so the client sees which field to drop.
    const errors = err.validation.map((v) => {
      const extra = (v.params as { additionalProperty?: unknown } | undefined)?.additionalProperty;
      return {
        path: `${ctx}${v.instancePath}${typeof extra === "string" ? `/${extra}` : ""}`,
        message: v.message ?? "is invalid",
      };
    });
    if (ctx === "params") return problem(404, "job_not_found", "no such job");
    if (ctx === "headers") return problem(400, "bad_request", `invalid header: ${errors[0]?.message ?? ""}`, { errors });
    return problem(422, "validation_failed", `${errors[0]?.path ?? ctx} ${errors[0]?.message ?? "is invalid"}`, { errors });
  }
  switch (err.code) {
    case "FST_ERR_CTP_BODY_TOO_LARGE":
      return problem(413, "payload_too_large", "the request body is larger than this server accepts");
    case "FST_ERR_CTP_INVALID_MEDIA_TYPE":
      return problem(415, "unsupported_media_type", "this endpoint does not accept that Content-Type");
    case "FST_ERR_CTP_EMPTY_JSON_BODY":
      return problem(400, "bad_request", "the JSON body is empty");
    case "FST_ERR_CTP_INVALID_CONTENT_LENGTH":
      return problem(400, "bad_request", "Content-Length does not match the body");
    // Raised by the router before any route runs (see frameworkErrors in coordinator.ts).
    case "FST_ERR_BAD_URL":
      return problem(400, "bad_request", "the URL has an invalid percent-encoding");
    case "FST_ERR_MAX_PARAM_LENGTH":
      return problem(404, "job_not_found", "no such job");
    default:
      break;
  }
  if (err instanceof SyntaxError || err.code === "FST_ERR_CTP_INVALID_JSON_BODY") {
    return problem(400, "malformed_json", "the body is not valid JSON");
  }
  const status = err.statusCode;
  if (status !== undefined && status >= 400 && status < 500) {
    return problem(status, "bad_request", err.message);
  }
  return undefined;
}

export function errorHandler(log: Logger) {
  return (err: FastifyError | AppError | Error, request: FastifyRequest, reply: FastifyReply): FastifyReply => {
    if (err instanceof AppError) {
      const p = problem(err.status, err.code, err.message, {
        retryable: err.retryable,
        ...(err.details === undefined ? {} : err.details),
      });
      if (err.status === 503) {
        const after = Number(err.details?.retry_after_seconds ?? 1);
        void reply.header("Retry-After", String(after));
        log.warn({ err: err.cause ?? err, url: request.url }, "storage unavailable");
      } else if (err.status >= 500) {
        log.error({ err, url: request.url }, "request failed");
      }
      return sendProblem(reply, p);
    }
    const mapped = fromFastifyError(err as FastifyError);
    if (mapped !== undefined) return sendProblem(reply, mapped);
    log.error({ err, url: request.url }, "unhandled error");
    return sendProblem(reply, problem(500, "internal", "the server failed to handle this request"));
  };
}
