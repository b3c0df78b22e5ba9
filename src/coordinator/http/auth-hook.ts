import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import type { ApiKeyRecord } from "../store/job-store.js";
import type { CoordinatorContext } from "../context.js";
import { keyKindOf } from "../auth/api-key.js";
import { SESSION_COOKIE, cookieValue, verifySession } from "../auth/operator-session.js";
import { problem, sendProblem } from "./problem.js";

declare module "fastify" {
  interface FastifyRequest {
    apiKey: ApiKeyRecord | null;
  }
}

/** The caller's tenant; routes behind the auth hook always have one. */
export function tenantOf(request: FastifyRequest): string {
  if (request.apiKey === null) throw new Error("route reached without an authenticated key");
  return request.apiKey.tenant;
}

export function bearerToken(header: string | undefined): string | undefined {
  const m = header === undefined ? null : /^Bearer\s+(\S+)\s*$/i.exec(header);
  return m?.[1];
}

/** The operator endpoints: operator keys (or a dashboard session) only. */
export const ADMIN_PATHS = /^\/v1\/admin(\/|$)/;

const UNSAFE = new Set(["POST", "PUT", "PATCH", "DELETE"]);

/**
 * Client routes (`/v1/…` except the miner gateway and /v1/admin) need a client key
 * (`Authorization: Bearer aitbc_ck_…`); operator routes (/v1/admin/…) an operator key
 * (`aitbc_ok_…`) or the dashboard's session cookie. A key of the wrong kind is refused with 403
 * naming the kind it needs. Each kind passes its own per-key rate limiter, whose state is
 * reported in RateLimit-* headers on every answer and Retry-After on a 429.
 */
export function registerAuth(app: FastifyInstance, ctx: CoordinatorContext, isPublic: (url: string) => boolean): void {
  app.decorateRequest("apiKey", null);
  app.addHook("onRequest", async (request: FastifyRequest, reply: FastifyReply) => {
    // The router decodes the path (`/%761/jobs` is `/v1/jobs`), so judge the route it matched;
    // the raw path only for a request no route matched (answered 404, or 401 under /v1/).
    const url = request.routeOptions.url ?? request.url.split("?")[0] ?? "";
    // Only the APIs need a key; any other path is public or answered 404 by the router.
    if (isPublic(url) || !(url === "/v1" || url.startsWith("/v1/"))) return;
    const admin = ADMIN_PATHS.test(url);
    const token = bearerToken(request.headers.authorization);
    const unauthorized = (detail: string): FastifyReply => {
      void reply.header("WWW-Authenticate", 'Bearer realm="aitbc"');
      return sendProblem(reply, problem(401, "unauthorized", detail));
    };
    let key: ApiKeyRecord | null;
    if (admin) {
      if (token !== undefined) {
        key = await ctx.store.authenticate(token, "operator");
        if (key === null) {
          const kind = keyKindOf(token);
          if (kind === "client" || kind === "miner") {
            return sendProblem(reply, problem(403, "operator_key_required", `a ${kind} key cannot use the operator endpoints: use an operator key (aitbc keys create --operator)`));
          }
          return unauthorized("the API key is not valid");
        }
      } else {
        const cookie = cookieValue(request.headers.cookie, SESSION_COOKIE);
        if (cookie === undefined) return unauthorized("an operator key is required (Authorization: Bearer …, or log in at /dashboard)");
        key = await verifySession(ctx.store, cookie, ctx.now());
        if (key === null) return unauthorized("the dashboard session has expired or was revoked: log in again");
        // SameSite=Strict keeps other sites' requests from carrying the cookie; a foreign Origin is refused too.
        if (UNSAFE.has(request.method) && !sameOrigin(request)) {
          return sendProblem(reply, problem(403, "cross_origin", "a dashboard session acts only from the coordinator's own pages"));
        }
      }
    } else {
      key = token === undefined ? null : await ctx.store.authenticate(token, "client");
      if (key === null) {
        if (token !== undefined && keyKindOf(token) === "operator") {
          return sendProblem(reply, problem(403, "client_key_required", "an operator key cannot use the client API: use a client key (aitbc keys create)"));
        }
        return unauthorized(token === undefined ? "an API key is required (Authorization: Bearer …)" : "the API key is not valid");
      }
    }
    request.apiKey = key;
    const d = await (admin ? ctx.adminLimiter : ctx.limiter).check(key.id, ctx.now());
    void reply.header("RateLimit-Limit", String(d.limit));
    void reply.header("RateLimit-Remaining", String(d.remaining));
    void reply.header("RateLimit-Reset", String(d.resetSeconds));
    if (!d.allowed) {
      void reply.header("Retry-After", String(d.retryAfterSeconds));
      request.log.info({ keyId: key.id }, "rate limited");
      ctx.metrics.rateLimited.inc();
      return sendProblem(
        reply,
        problem(429, "rate_limited", `too many requests for this API key; retry in ${d.retryAfterSeconds} s`, {
          retry_after_seconds: d.retryAfterSeconds,
        }),
      );
    }
    return undefined;
  });
}

/** No Origin (not a browser's cross-site request) or the same host the request was sent to. */
function sameOrigin(request: FastifyRequest): boolean {
  const origin = request.headers.origin;
  if (origin === undefined) return true;
  try {
    return new URL(origin).host === request.headers.host;
  } catch {
    return false;
  }
}
