import { readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { JOB_STATES } from "../../src/protocol/version.js";
import { PROBLEM_CODES, problemCode } from "../../src/coordinator/http/problem-codes.js";
import { expectProblem, startApi, type ApiHarness } from "./api-harness.js";

const root = path.resolve(import.meta.dirname, "../..");

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true, recursive: true })
    .filter((e) => e.isFile() && e.name.endsWith(".ts"))
    .map((e) => path.join(e.parentPath, e.name));
}

/** The first argument of each call of `callee(` in the text (up to its first top-level comma). */
function firstArguments(text: string, callee: RegExp): string[] {
  const out: string[] = [];
  for (const m of text.matchAll(callee)) {
    let depth = 0;
    let i = m.index + m[0].length;
    const start = i;
    for (; i < text.length; i += 1) {
      const c = text[i];
      if (c === "(" || c === "[" || c === "{") depth += 1;
      else if (c === ")" || c === "]" || c === "}") {
        if (depth === 0) break;
        depth -= 1;
      } else if (c === "," && depth === 0) break;
    }
    out.push(text.slice(start, i));
  }
  return out;
}

/**
 * The codes an argument can yield: its string literals, except operands of a comparison
 * (`x === "expired" ? "result_expired" : …`); a template such as `job_${job.status}` becomes a
 * pattern every one of whose expansions must be in the table.
 */
function codesIn(arg: string): { literal: string[]; templates: string[] } {
  const literal = [...arg.matchAll(/(?<![=!]==\s*)"([a-z][a-z0-9_]*)"/g)].map((m) => m[1]!);
  const templates = [...arg.matchAll(/`([a-z_]*\$\{[^}]+\}[a-z_]*)`/g)].map((m) => m[1]!);
  return { literal, templates };
}

/** Every code the coordinator can answer an HTTP request with, read from its source. */
function codesUsed(): { codes: Set<string>; templates: Set<string> } {
  const errorsTs = readFileSync(path.join(root, "src/common/errors.ts"), "utf8");
  // Error classes of src/common/errors.ts with a fixed code: `class X extends AppError { … super("code", …`.
  const classCodes = new Map([...errorsTs.matchAll(/class (\w+) extends AppError \{(?:(?!\nexport )[\s\S])*?super\("([a-z_]+)"/g)].map((m) => [m[1]!, m[2]!]));
  expect(classCodes.get("ValidationError")).toBe("validation_failed");
  expect(classCodes.get("UnavailableError")).toBe("unavailable");
  expect(classCodes.has("NotFoundError")).toBe(false); // its code is the caller's
  const codes = new Set<string>(["internal"]); // toAppError's, for whatever is thrown unknown
  const templates = new Set<string>();
  for (const file of sourceFiles(path.join(root, "src/coordinator"))) {
    const text = readFileSync(file, "utf8");
    const args = [
      ...firstArguments(text, /\bproblem\(\s*[^,]+,/g),
      ...firstArguments(text, /\bnew (?:AppError|NotFoundError|ConflictError|ModelError)\(/g),
      ...firstArguments(text, /\bsuper\(/g),
    ];
    for (const arg of args) {
      const found = codesIn(arg);
      found.literal.forEach((c) => codes.add(c));
      found.templates.forEach((t) => templates.add(t));
    }
    // Refusals built as data first: `{ status: 429, code: "rate_limited", … }`.
    for (const m of text.matchAll(/status:\s*\d{3},\s*code:\s*"([a-z_]+)"/g)) codes.add(m[1]!);
    for (const [cls, code] of classCodes) if (new RegExp(`\\bnew ${cls}\\(`).test(text)) codes.add(code);
  }
  return { codes, templates };
}

describe("problem codes", () => {
  it("has an entry, with a meaning, an action and its statuses, for every code the coordinator answers with", () => {
    const { codes, templates } = codesUsed();
    // The scan finds codes in each way they are raised (a broken scan would find none of these).
    for (const c of ["job_not_found", "rate_limited", "result_expired", "result_deleted", "idempotency_key_reused", "unavailable", "too_many_connections", "payload_too_large"]) {
      expect(codes).toContain(c);
    }
    expect(templates).toContain("job_${job.status}");
    const missing = [...codes].filter((c) => problemCode(c) === undefined);
    expect(missing).toEqual([]);
    // job_${job.status}: the states a completion can end in without a result (cancelled has its own code).
    for (const state of JOB_STATES.filter((s) => ["failed", "timed_out", "expired"].includes(s))) expect(problemCode(`job_${state}`)).toBeDefined();
    for (const [code, p] of Object.entries(PROBLEM_CODES)) {
      expect(code).toMatch(/^[a-z][a-z0-9_]*$/);
      expect(p.statuses.length).toBeGreaterThan(0);
      for (const s of p.statuses) expect(s).toBeGreaterThanOrEqual(400);
      expect(p.meaning.length).toBeGreaterThan(20);
      expect(p.action.length).toBeGreaterThan(10);
    }
  });
});

describe("problem pages", () => {
  let h: ApiHarness & { key: string };
  beforeAll(async () => {
    h = await startApi();
  });
  afterAll(async () => h.stop());

  it("a 404 job_not_found's type leads to the coordinator's page about that code, as JSON and as HTML", async () => {
    const body = await expectProblem(await h.call("GET", "/v1/jobs/job_doesnotexist"), 404, "job_not_found");
    expect(body.type).toBe("/problems/job_not_found");
    const target = new URL(body.type as string, `${h.url}/v1/jobs/job_doesnotexist`);
    const json = await fetch(target);
    expect(json.status).toBe(200);
    expect(json.headers.get("content-type")).toMatch(/^application\/json/);
    expect(await json.json()).toEqual({
      code: "job_not_found",
      type: "/problems/job_not_found",
      statuses: [404],
      title: PROBLEM_CODES.job_not_found.title,
      meaning: PROBLEM_CODES.job_not_found.meaning,
      action: PROBLEM_CODES.job_not_found.action,
      retryable: false,
    });
    const html = await fetch(target, { headers: { accept: "text/html,application/xhtml+xml" } });
    expect(html.status).toBe(200);
    expect(html.headers.get("content-type")).toMatch(/^text\/html/);
    const text = await html.text();
    expect(text).toContain("<code>job_not_found</code>");
    expect(text).toContain("belongs to another tenant");
  });

  it("lists every code at /problems, answers 404 for an unknown one, and needs no key", async () => {
    const list = (await (await fetch(`${h.url}/problems`)).json()) as { items: { code: string; type: string }[] };
    expect(list.items.map((i) => i.code).sort()).toEqual(Object.keys(PROBLEM_CODES).sort());
    const html = await (await fetch(`${h.url}/problems`, { headers: { accept: "text/html" } })).text();
    for (const code of Object.keys(PROBLEM_CODES)) expect(html).toContain(`href="/problems/${code}"`);
    await expectProblem(await fetch(`${h.url}/problems/no_such_code`), 404, "not_found");
  });

  it("makes the type absolute under [server] public_url", async () => {
    const p = await startApi({ "server.public_url": "https://coord.example/aitbc/" });
    try {
      const body = await expectProblem(await p.call("GET", "/v1/jobs/job_doesnotexist"), 404, "job_not_found");
      expect(body.type).toBe("https://coord.example/aitbc/problems/job_not_found");
      // A validation error, an auth error and the router's 404 take the same base.
      const unauth = await expectProblem(await p.call("GET", "/v1/jobs", { key: null }), 401, "unauthorized");
      expect(unauth.type).toBe("https://coord.example/aitbc/problems/unauthorized");
      const bad = await expectProblem(await p.call("POST", "/v1/jobs", { json: { model: "gpt2" } }), 422, "validation_failed");
      expect(bad.type).toBe("https://coord.example/aitbc/problems/validation_failed");
    } finally {
      await p.stop();
    }
  });
});
