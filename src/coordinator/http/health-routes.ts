import type { FastifyPluginAsyncTypebox } from "@fastify/type-provider-typebox";
import { Type } from "@sinclair/typebox";
import type { CoordinatorContext } from "../context.js";

/** Liveness (the process answers) and readiness (started, and the store answers a query). */
const Ready = Type.Object({ status: Type.String(), miners: Type.Integer(), queued: Type.Integer() });

export function healthRoutes(ctx: CoordinatorContext, isReady: () => boolean): FastifyPluginAsyncTypebox {
  return async (app) => {
    app.get("/healthz", async () => ({ status: "ok" }));
    app.get(
      "/readyz",
      { schema: { summary: "Readiness", tags: ["health"], response: { 200: Ready, 503: Ready } } },
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
