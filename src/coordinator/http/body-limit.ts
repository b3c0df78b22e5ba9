import type { FastifyRequest } from "fastify";
import { AppError } from "../../common/errors.js";

/**
 * An onRequest hook that answers 413 from Content-Length, before the body is read, with the limit
 * and the config key that sets it (fastify's own check says neither). The connection stays open
 * and the rest of the body is read and dropped, so the client, still sending, gets this answer
 * rather than a reset (EPIPE) that can swallow it. A chunked body is still cut at the limit by
 * fastify's parser.
 */
export function refuseOversizedBody(limitBytes: number, what: string, configKey: string): (request: FastifyRequest) => Promise<void> {
  return async (request) => {
    const length = Number(request.headers["content-length"]);
    if (!Number.isFinite(length) || length <= limitBytes) return;
    throw new AppError("payload_too_large", `${what} is ${length} bytes; this coordinator accepts at most ${limitBytes} bytes (${configKey})`, {
      status: 413,
      details: { limit_bytes: limitBytes, bytes: length },
    });
  };
}
