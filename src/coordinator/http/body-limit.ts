import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import { AppError } from "../../common/errors.js";

/**
 * Route options for a body limit whose 413 names the limit and the config key that sets it
 * (fastify's own error says neither).
 *
 * - With Content-Length, the onRequest hook answers before the body is read; the connection
 *   stays open and the rest of the body is read and dropped, so a client still sending gets
 *   this answer rather than a reset (EPIPE) that can swallow it.
 * - A chunked body is cut at the limit by fastify's parser; the route's error handler gives
 *   that error the same message before the coordinator's handler renders it.
 */
export function bodyLimitOptions(app: FastifyInstance, limitBytes: number, what: string, configKey: string) {
  const tooLarge = (length: number | undefined): AppError =>
    new AppError(
      "payload_too_large",
      length === undefined
        ? `${what} is over ${limitBytes} bytes, the most this coordinator accepts (${configKey})`
        : `${what} is ${length} bytes; this coordinator accepts at most ${limitBytes} bytes (${configKey})`,
      {
        status: 413,
        details: { limit_bytes: limitBytes, ...(length === undefined ? {} : { bytes: length }) },
      },
    );
  return {
    bodyLimit: limitBytes,
    onRequest: async (request: FastifyRequest): Promise<void> => {
      const length = Number(request.headers["content-length"]);
      if (Number.isFinite(length) && length > limitBytes) throw tooLarge(length);
    },
    errorHandler: (err: FastifyError, request: FastifyRequest, reply: FastifyReply): void => {
      app.errorHandler(err.code === "FST_ERR_CTP_BODY_TOO_LARGE" ? tooLarge(undefined) : err, request, reply);
    },
  };
}
