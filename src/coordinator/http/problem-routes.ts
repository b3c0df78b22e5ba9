import type { FastifyPluginAsyncTypebox } from "@fastify/type-provider-typebox";
import type { FastifyRequest } from "fastify";
import { Type, type Static } from "@sinclair/typebox";
import { ProblemSchema } from "../../protocol/jobs.js";
import { PROBLEM_CODES, problemCode, problemPath, type ProblemCode } from "./problem-codes.js";
import { problem, sendProblem } from "./problem.js";

const tags = ["problems"];

const ProblemCodeSchema = Type.Object({
  code: Type.String({ description: "The `code` member of the error body." }),
  type: Type.String({ description: "The `type` member errors with this code carry: this page's path." }),
  statuses: Type.Array(Type.Integer(), { description: "HTTP statuses this code comes with." }),
  title: Type.String({ description: "A short name for the code." }),
  meaning: Type.String({ description: "What happened." }),
  action: Type.String({ description: "What the caller can do about it." }),
  retryable: Type.Boolean({ description: "Whether the same request sent again can succeed (after Retry-After when the answer has one)." }),
});

function entry(code: string, p: ProblemCode): Static<typeof ProblemCodeSchema> {
  return { code, type: problemPath(code), statuses: [...p.statuses], title: p.title, meaning: p.meaning, action: p.action, retryable: p.retryable };
}

/** HTML for a browser (Accept names text/html), JSON for everyone else (curl, scripts). */
function wantsHtml(request: FastifyRequest): boolean {
  return /\btext\/html\b/.test(request.headers.accept ?? "");
}

function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** `backticks` in the table's text as <code>, the rest escaped. */
function prose(s: string): string {
  return escapeHtml(s).replace(/`([^`]+)`/g, "<code>$1</code>");
}

function page(title: string, body: string): string {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${escapeHtml(title)}</title>
<style>body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}td,th{text-align:left;vertical-align:top;padding:.3rem .6rem;border-bottom:1px solid #ddd}code{background:#f3f3f3;padding:0 .2rem}</style>
</head><body>${body}</body></html>
`;
}

function codeSection(code: string, p: ProblemCode): string {
  return `<h1><code>${escapeHtml(code)}</code>: ${escapeHtml(p.title)}</h1>
<dl><dt>HTTP status</dt><dd>${p.statuses.join(", ")}</dd>
<dt>What it means</dt><dd>${prose(p.meaning)}</dd>
<dt>What to do</dt><dd>${prose(p.action)}</dd>
<dt>Retry</dt><dd>${p.retryable ? "yes: the same request can succeed later (wait for Retry-After when the answer has one)" : "no: sending the same request again gets the same answer"}</dd></dl>
<p><a href="/problems">All codes</a> · <a href="/docs">API docs</a></p>`;
}

function listPage(): string {
  const rows = Object.entries(PROBLEM_CODES as Record<string, ProblemCode>)
    .map(([code, p]) => `<tr><td><a href="${problemPath(code)}"><code>${escapeHtml(code)}</code></a></td><td>${p.statuses.join(", ")}</td><td>${prose(p.meaning)}</td><td>${p.retryable ? "yes" : "no"}</td></tr>`)
    .join("\n");
  return page(
    "aitbc coordinator: error codes",
    `<h1>Error codes</h1>
<p>Errors are <code>application/problem+json</code> (RFC 9457): <code>type</code> links here, <code>code</code> is stable, <code>detail</code> says what went wrong this time. The OpenAI-compatible routes answer <code>{"error": {"message", "type", "code", "param"}}</code> with the same codes.</p>
<table><thead><tr><th>code</th><th>status</th><th>meaning</th><th>retry</th></tr></thead><tbody>
${rows}
</tbody></table>`,
  );
}

/**
 * GET /problems and GET /problems/{code}: the pages problem `type` URIs point at, one per code of
 * problem-codes.ts, as HTML for a browser and JSON otherwise. Public, like /docs.
 */
export function problemRoutes(): FastifyPluginAsyncTypebox {
  return async (app) => {
    app.get(
      "/problems",
      {
        schema: {
          summary: "Every error code: what it means, what to do, whether to retry",
          description: "JSON by default; HTML when Accept names text/html (a browser following a problem's `type`).",
          tags,
          security: [],
          response: {
            200: {
              description: "The codes",
              content: { "application/json": { schema: Type.Object({ items: Type.Array(ProblemCodeSchema, { description: "Every code, as GET /problems/{code} answers it" }) }) }, "text/html": { schema: Type.String() } },
            },
          },
        },
      },
      async (request, reply) => {
        if (wantsHtml(request)) return reply.type("text/html; charset=utf-8").send(listPage());
        return { items: Object.entries(PROBLEM_CODES as Record<string, ProblemCode>).map(([code, p]) => entry(code, p)) };
      },
    );
    app.get(
      "/problems/:code",
      {
        schema: {
          summary: "One error code (the page a problem's `type` points at)",
          description: "JSON by default; HTML when Accept names text/html.",
          tags,
          security: [],
          params: Type.Object({ code: Type.String({ maxLength: 64, description: "An error `code`", examples: ["job_not_found"] }) }),
          response: {
            200: { description: "The code", content: { "application/json": { schema: ProblemCodeSchema }, "text/html": { schema: Type.String() } } },
            404: ProblemSchema,
          },
        },
      },
      async (request, reply) => {
        const code = request.params.code;
        const p = problemCode(code);
        if (p === undefined) return sendProblem(reply, problem(404, "not_found", `no error code ${code}: GET /problems lists them`));
        if (wantsHtml(request)) return reply.type("text/html; charset=utf-8").send(page(`${code}: ${p.title}`, codeSection(code, p)));
        return entry(code, p);
      },
    );
  };
}
