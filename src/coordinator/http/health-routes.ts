import type { FastifyPluginAsyncTypebox } from "@fastify/type-provider-typebox";
import { Type } from "@sinclair/typebox";
import type { CoordinatorContext } from "../context.js";

/** Liveness (the process answers) and readiness (started, and the store answers a query). */
const Ready = Type.Object({
  status: Type.String({ description: "ready; starting (the coordinator is not listening for work yet) or storage_unavailable (the store did not answer) with 503" }),
  miners: Type.Integer({ description: "Miners connected (0 on a 503)" }),
  queued: Type.Integer({ description: "Jobs queued, all tenants (0 on a 503)" }),
});
const Live = Type.Object({ status: Type.Literal("ok", { description: "Always ok: the process answers" }) });
const tags = ["health"];

export function healthRoutes(ctx: CoordinatorContext, isReady: () => boolean): FastifyPluginAsyncTypebox {
  return async (app) => {
    app.get(
      "/healthz",
      { schema: { summary: "Liveness: the process answers", description: "For a supervisor's liveness probe; says nothing about the store (see /readyz). No key needed.", tags, security: [], response: { 200: Live } } },
      async () => ({ status: "ok" as const }),
    );
    app.get(
      "/readyz",
      {
        schema: {
          summary: "Readiness: started, and the store answers a query",
          description: "For a load balancer: 503 while starting or while the store does not answer (with Retry-After), so traffic goes to another replica. No key needed.",
          tags,
          security: [],
          response: { 200: Ready, 503: Ready },
        },
      },
      async (_request, reply) => {
        if (!isReady()) {
          return reply.code(503).type("application/problem+json").send({ status: "starting", miners: 0, queued: 0 });
        }
        // Not ready while the store does not answer (a load balancer sends traffic elsewhere).
        try {
          const queued = await ctx.store.countQueued({});
          return { status: "ready", miners: await ctx.miners.connectedMiners(), queued };
        } catch {
          void reply.header("Retry-After", "1");
          return reply.code(503).type("application/problem+json").send({ status: "storage_unavailable", miners: 0, queued: 0 });
        }
      },
    );
  };
}
