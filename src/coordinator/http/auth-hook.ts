import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import type { ApiKeyRecord } from "../store/job-store.js";
import type { CoordinatorContext } from "../context.js";
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

/**
 * Client routes (`/v1/…` except the miner gateway) need a client key
 * (`Authorization: Bearer aitbc_ck_…`) and pass the per-key rate limiter, whose state is
 * reported in RateLimit-* headers on every answer and Retry-After on a 429.
 */
export function registerAuth(app: FastifyInstance, ctx: CoordinatorContext, isPublic: (url: string) => boolean): void {
  app.decorateRequest("apiKey", null);
  app.addHook("onRequest", async (request: FastifyRequest, reply: FastifyReply) => {
    // The router decodes the path (`/%761/jobs` is `/v1/jobs`), so judge the route it matched;
    // the raw path only for a request no route matched (answered 404, or 401 under /v1/).
    const url = request.routeOptions.url ?? request.url.split("?")[0] ?? "";
    // Only the client API needs a key; any other path is public or answered 404 by the router.
    if (isPublic(url) || !(url === "/v1" || url.startsWith("/v1/"))) return;
    const token = bearerToken(request.headers.authorization);
    const key = token === undefined ? null : await ctx.store.authenticate(token, "client");
    if (key === null) {
      void reply.header("WWW-Authenticate", 'Bearer realm="aitbc"');
      return sendProblem(
        reply,
        problem(401, "unauthorized", token === undefined ? "an API key is required (Authorization: Bearer …)" : "the API key is not valid"),
      );
    }
    request.apiKey = key;
    const d = await ctx.limiter.check(key.id, ctx.now());
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
