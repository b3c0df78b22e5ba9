import { readFile } from "node:fs/promises";
import path from "node:path";
import type { FastifyPluginAsyncTypebox } from "@fastify/type-provider-typebox";
import type { FastifyRequest } from "fastify";
import { Type } from "@sinclair/typebox";
import { AppError } from "../../common/errors.js";
import { PACKAGE_ROOT } from "../../common/package-info.js";
import { SESSION_COOKIE, cookieValue, issueSession, verifySession } from "../auth/operator-session.js";
import type { CoordinatorContext } from "../context.js";

/** The page's files, built from src/dashboard into dist/dashboard (`npm run build`). */
const ASSETS: Record<string, { file: string; type: string }> = {
  "/dashboard": { file: "index.html", type: "text/html; charset=utf-8" },
  "/dashboard/app.js": { file: "app.js", type: "text/javascript; charset=utf-8" },
  "/dashboard/app.css": { file: "app.css", type: "text/css; charset=utf-8" },
};

/** Nothing from elsewhere: no CDN, no inline script, no framing. */
const CSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

function secure(request: FastifyRequest): boolean {
  return request.protocol === "https" || request.headers["x-forwarded-proto"] === "https";
}

/**
 * The operator dashboard at /dashboard: a static page (no framework, no CDN) that reads
 * /v1/admin/… with a session cookie. POST /dashboard/login exchanges an operator key for an
 * HttpOnly, SameSite=Strict cookie lasting `[admin] session_ttl`; the key is never stored by the
 * page nor put in a URL. POST /dashboard/logout clears it.
 */
export function dashboardRoutes(ctx: CoordinatorContext): FastifyPluginAsyncTypebox {
  return async (app) => {
    const dir = path.join(PACKAGE_ROOT, "dist", "dashboard");
    const cache = new Map<string, Buffer>();
    for (const [url, asset] of Object.entries(ASSETS)) {
      app.get(url, { schema: { hide: true } }, async (_request, reply) => {
        let body = cache.get(asset.file);
        if (body === undefined) {
          try {
            body = await readFile(path.join(dir, asset.file));
          } catch {
            throw new AppError("dashboard_not_built", "the dashboard's files are missing: run `npm run build`", { status: 503 });
          }
          cache.set(asset.file, body);
        }
        return reply
          .type(asset.type)
          .header("Content-Security-Policy", CSP)
          .header("X-Content-Type-Options", "nosniff")
          .header("Referrer-Policy", "no-referrer")
          .header("Cache-Control", "no-cache")
          .send(body);
      });
    }

    app.post(
      "/dashboard/login",
      {
        schema: {
          summary: "Log in to the dashboard: an operator key for a session cookie",
          tags: ["admin"],
          body: Type.Object({ key: Type.String({ minLength: 1, maxLength: 256, description: "An operator key (aitbc keys create --operator)", examples: ["aitbc_ok_…"] }) }, { additionalProperties: false, examples: [{ key: "aitbc_ok_…" }] }),
        },
      },
      async (request, reply) => {
        const record = await ctx.store.authenticate(request.body.key.trim(), "operator");
        const key = record === null ? null : await ctx.store.getKey(record.id);
        if (key === null) {
          request.log.info("dashboard login refused");
          throw new AppError("invalid_key", "that is not a valid operator key (aitbc keys create --operator)", { status: 401 });
        }
        const s = issueSession(key, ctx.now(), ctx.config.admin.sessionTtlMs);
        const cookie = [`${SESSION_COOKIE}=${s.value}`, "HttpOnly", "SameSite=Strict", "Path=/", `Max-Age=${Math.floor(ctx.config.admin.sessionTtlMs / 1000)}`];
        if (secure(request)) cookie.push("Secure");
        request.log.info({ keyId: key.record.id }, "dashboard login");
        return reply
          .header("Set-Cookie", cookie.join("; "))
          .header("Cache-Control", "no-store")
          .send({ key_id: key.record.id, name: key.record.name, expires_at: new Date(s.expires).toISOString() });
      },
    );

    // Whether this browser holds a live session (200 either way: the page asks before it shows a login form).
    app.get("/dashboard/session", { schema: { summary: "The dashboard session this browser holds, if any", tags: ["admin"] } }, async (request, reply) => {
      const cookie = cookieValue(request.headers.cookie, SESSION_COOKIE);
      const key = cookie === undefined ? null : await verifySession(ctx.store, cookie, ctx.now());
      return reply.header("Cache-Control", "no-store").send({ operator: key === null ? null : { key_id: key.id, name: key.name } });
    });

    app.post("/dashboard/logout", { schema: { summary: "Log out of the dashboard", tags: ["admin"] } }, async (_request, reply) =>
      reply.header("Set-Cookie", `${SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0`).code(204).send(),
    );
  };
}
