import { createHash } from "node:crypto";
import type { FastifyPluginAsyncTypebox } from "@fastify/type-provider-typebox";
import { Type } from "@sinclair/typebox";
import { AppError, NotFoundError, ValidationError } from "../../common/errors.js";
import { FileResponseSchema, ProblemSchema } from "../../protocol/jobs.js";
import type { CoordinatorContext } from "../context.js";
import { tenantOf } from "./auth-hook.js";
import { bodyLimitOptions } from "./body-limit.js";

const decoder = new TextDecoder("utf-8", { fatal: true });

/**
 * The upload's body for /docs only: the route reads the raw bytes (a schema on `body` would be
 * checked against the Buffer), so the documentation gets it through swaggerTransform.
 */
const FileBodyDoc = Type.String({
  description: "The file's bytes, UTF-8 text (a leading byte-order mark is dropped from the prompt); at most [limits] max_file_size",
  examples: ["Once upon a time, in a data centre far away,\n"],
});

/** POST /v1/files: a UTF-8 text file (the raw body) to use as a job's `input` by its file_id. */
export function fileRoutes(ctx: CoordinatorContext): FastifyPluginAsyncTypebox {
  return async (app) => {
    app.removeContentTypeParser(["text/plain"]);
    app.addContentTypeParser(
      ["text/plain", "application/octet-stream"],
      { parseAs: "buffer", bodyLimit: ctx.config.limits.maxFileBytes },
      (_request, body, done) => done(null, body),
    );
    app.post(
      "/v1/files",
      {
        ...bodyLimitOptions(app, ctx.config.limits.maxFileBytes, "the file", "[limits] max_file_size"),
        config: { swaggerTransform: ({ schema, url }) => ({ schema: { ...schema, body: FileBodyDoc }, url }) },
        schema: {
          summary: "Upload a UTF-8 text file to use as a job's input",
          description: "The body is the file itself (text/plain or application/octet-stream, not multipart). Use the answer's file_id as a job's input; 201 carries Location: /v1/files/{id}.",
          tags: ["files"],
          consumes: ["text/plain", "application/octet-stream"],
          response: { 201: FileResponseSchema, 400: ProblemSchema, 401: ProblemSchema, 413: ProblemSchema, 415: ProblemSchema, 422: ProblemSchema, 429: ProblemSchema },
        },
      },
      async (request, reply) => {
        const body = request.body;
        // Another registered parser (JSON) gives no Buffer: that is the wrong media type, not an empty file.
        if (!Buffer.isBuffer(body)) {
          throw new AppError("unsupported_media_type", "upload the file as text/plain or application/octet-stream", { status: 415 });
        }
        if (body.length === 0) throw new ValidationError("the file is empty", { field: "body" });
        let text: string;
        try {
          text = decoder.decode(body);
        } catch {
          throw new ValidationError("the file is not valid UTF-8 text", { field: "body" });
        }
        // The decoder drops a leading byte-order mark: a BOM-only file is empty text (an empty prompt).
        if (text.length === 0) throw new ValidationError("the file is empty", { field: "body" });
        if (text.length > ctx.config.limits.maxInputChars) {
          throw new ValidationError(`the file is longer than ${ctx.config.limits.maxInputChars} characters`, { field: "body" });
        }
        // Size and hash describe the bytes as uploaded (what `sha256sum` of the client's file says);
        // the prompt is the decoded text, without a leading BOM.
        const tenant = tenantOf(request);
        const usage = await ctx.store.usage(tenant);
        const quota = ctx.config.limits.maxFileBytesPerTenant;
        if (usage.fileBytes + body.length > quota) {
          throw new AppError(
            "storage_quota_exceeded",
            `this tenant's files take ${usage.fileBytes} bytes of its ${quota}-byte quota ([limits] max_file_bytes_per_tenant); this file of ${body.length} bytes does not fit: delete files (DELETE /v1/files/{id})`,
            { status: 429, details: { quota: "files", limit_bytes: quota, used_bytes: usage.fileBytes } },
          );
        }
        const sha = createHash("sha256").update(body).digest("hex");
        const file = await ctx.store.createFile(tenant, text, { sha256: sha, bytes: body.length }, ctx.now());
        return reply.code(201).header("location", `/v1/files/${file.id}`).send({ file_id: file.id, bytes: file.bytes, sha256: file.sha256, created_at: new Date(file.createdAt).toISOString() });
      },
    );

    app.delete(
      "/v1/files/:file_id",
      {
        schema: {
          summary: "Delete an uploaded file",
          description: "Jobs that used the file keep their own copy of the prompt. 404 for an unknown file or another tenant's.",
          tags: ["files"],
          params: Type.Object({ file_id: Type.String({ pattern: "^file_[a-z0-9]{1,64}$", description: "The file_id POST /v1/files answered", examples: ["file_abc123"] }) }),
          response: { 204: Type.Null(), 401: ProblemSchema, 404: ProblemSchema },
        },
      },
      async (request, reply) => {
        if (!(await ctx.store.deleteFile(tenantOf(request), request.params.file_id))) throw new NotFoundError("file_not_found", "no such file");
        return reply.code(204).send(null);
      },
    );
  };
}
