import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { JOB_EVENT_NAMES } from "../../src/coordinator/http/events-route.js";
import { startApi, type ApiHarness } from "./api-harness.js";

interface Schema {
  description?: string;
  properties?: Record<string, Schema>;
  items?: Schema;
  anyOf?: Schema[];
  oneOf?: Schema[];
}
interface Media {
  schema?: Schema;
  example?: unknown;
  examples?: Record<string, { value: unknown }>;
}
interface Operation {
  summary?: string;
  description?: string;
  tags?: string[];
  parameters?: { name: string; in: string; description?: string; example?: unknown; schema?: Schema }[];
  requestBody?: { content: Record<string, Media> };
  responses: Record<string, { description: string; content?: Record<string, Media> }>;
}
type Doc = { paths: Record<string, Record<string, Operation>>; tags?: { name: string; description?: string }[] };

/** Dotted paths of properties, at any depth, that have no description. */
function undescribed(schema: Schema | undefined, at = ""): string[] {
  if (schema === undefined) return [];
  const out: string[] = [];
  for (const [k, v] of Object.entries(schema.properties ?? {})) {
    if (typeof v.description !== "string" || v.description === "") out.push(`${at}${k}`);
    out.push(...undescribed(v, `${at}${k}.`));
  }
  for (const alt of [...(schema.anyOf ?? []), ...(schema.oneOf ?? [])]) out.push(...undescribed(alt, at));
  if (schema.items !== undefined) out.push(...undescribed(schema.items, `${at}[].`));
  return out;
}

describe("/openapi.json (what /docs shows)", () => {
  let h: ApiHarness & { key: string };
  let doc: Doc;
  const operations = (): [string, string, Operation][] => Object.entries(doc.paths).flatMap(([p, ops]) => Object.entries(ops).map(([m, o]) => [m, p, o] as [string, string, Operation]));
  const op = (method: string, path: string): Operation => {
    const o = doc.paths[path]?.[method];
    if (o === undefined) throw new Error(`no ${method} ${path} in /openapi.json`);
    return o;
  };

  beforeAll(async () => {
    h = await startApi();
    const res = await h.call("GET", "/openapi.json", { key: null });
    expect(res.status).toBe(200);
    doc = (await res.json()) as Doc;
  });
  afterAll(async () => h.stop());

  it("documents both job event streams as text/event-stream with every event name and an example stream", () => {
    for (const path of ["/v1/jobs/{job_id}/events", "/v1/admin/jobs/{job_id}/events"]) {
      const o = op("get", path);
      const stream = o.responses["200"]?.content?.["text/event-stream"];
      expect(stream, path).toBeDefined();
      const example = String(stream?.example);
      for (const e of ["snapshot", "running", "progress", "token", "text_restart", "completed"]) expect(example).toContain(`event: ${e}\ndata: {`);
      expect(example).toMatch(/event: completed\ndata: \{.*"result":\{"download_url":/);
      for (const e of JOB_EVENT_NAMES) expect(o.description, `${path} names ${e}`).toContain(`\`${e}\``);
      // The payload of each data-carrying event is spelled out.
      expect(o.description).toMatch(/`token`.*index, text/);
      expect(o.description).toMatch(/`progress`.*tokens, max_tokens, tokens_per_second/);
      expect(o.description).toContain("Last-Event-ID");
      expect(o.parameters?.find((p) => p.name === "after")?.description).toBeTruthy();
    }
  });

  it("documents the OpenAI completion's JSON answer, its stream ending in [DONE] and request examples", () => {
    const o = op("post", "/v1/completions");
    const ok = o.responses["200"]?.content ?? {};
    expect(undescribed(ok["application/json"]?.schema)).toEqual([]);
    expect(String(ok["text/event-stream"]?.example)).toMatch(/data: \{"id":"job_.*"object":"text_completion".*\n\ndata: \[DONE\]\n\n$/s);
    expect(o.description).toContain("[DONE]");
    const examples = o.requestBody?.content["application/json"]?.examples ?? {};
    expect(Object.values(examples).some((e) => (e.value as { stream?: boolean }).stream === true)).toBe(true);
  });

  it("gives every operation a summary and a tag, and puts /healthz and /readyz under one tag", () => {
    const missing = operations().filter(([, , o]) => !o.summary || (o.tags ?? []).length === 0).map(([m, p]) => `${m} ${p}`);
    expect(missing).toEqual([]);
    expect(op("get", "/healthz").tags).toEqual(["health"]);
    expect(op("get", "/readyz").tags).toEqual(["health"]);
    expect(op("get", "/problems/{code}").tags).toEqual(["problems"]);
    // Each tag /docs groups by is declared with a description.
    const declared = new Map((doc.tags ?? []).map((t) => [t.name, t.description]));
    for (const tag of new Set(operations().flatMap(([, , o]) => o.tags ?? []))) expect(declared.get(tag), `tag ${tag}`).toBeTruthy();
  });

  it("describes every field of the job status, result.* included, and of every request body and 2xx answer", () => {
    const status = op("get", "/v1/jobs/{job_id}").responses["200"]?.content?.["application/json"]?.schema;
    expect(Object.keys(status?.properties ?? {})).toEqual(expect.arrayContaining(["model", "result", "progress", "error"]));
    expect(undescribed(status)).toEqual([]);
    // result is nullable: its fields are one level down, and they are checked too.
    const result = status?.properties?.result;
    const resultFields = [result, ...(result?.anyOf ?? [])].flatMap((s) => Object.keys(s?.properties ?? {}));
    expect(resultFields).toEqual(expect.arrayContaining(["output_sha256", "output_bytes", "usage", "finish_reason"]));
    expect(status?.properties?.model?.description).toMatch(/GET \/v1\/models/);

    const gaps: string[] = [];
    for (const [m, p, o] of operations()) {
      for (const media of Object.values(o.requestBody?.content ?? {})) gaps.push(...undescribed(media.schema).map((f) => `${m} ${p} body ${f}`));
      for (const prm of o.parameters ?? []) if (!prm.description) gaps.push(`${m} ${p} ${prm.in} ${prm.name}`);
      for (const [code, r] of Object.entries(o.responses)) {
        if (!code.startsWith("2")) continue;
        for (const media of Object.values(r.content ?? {})) gaps.push(...undescribed(media.schema).map((f) => `${m} ${p} ${code} ${f}`));
      }
    }
    expect(gaps).toEqual([]);
  });

  it("has a request example for each body and each path parameter", () => {
    const submit = op("post", "/v1/jobs").requestBody?.content["application/json"];
    const values = Object.values(submit?.examples ?? {}).map((e) => e.value as Record<string, unknown>);
    expect(values.length).toBeGreaterThanOrEqual(2);
    for (const v of values) expect(v).toMatchObject({ model: expect.any(String), input: expect.any(String) });
    const noExample: string[] = [];
    for (const [m, p, o] of operations()) {
      for (const prm of o.parameters ?? []) if (prm.in === "path" && prm.example === undefined) noExample.push(`${m} ${p} ${prm.name}`);
      for (const [ct, media] of Object.entries(o.requestBody?.content ?? {})) {
        if (media.example === undefined && media.examples === undefined) noExample.push(`${m} ${p} body ${ct}`);
      }
    }
    expect(noExample).toEqual([]);
  });

  it("documents the raw file upload's body and both download formats", () => {
    const upload = op("post", "/v1/files").requestBody?.content ?? {};
    expect(Object.keys(upload).sort()).toEqual(["application/octet-stream", "text/plain"]);
    expect(typeof upload["text/plain"]?.example).toBe("string");
    const download = op("get", "/v1/jobs/{job_id}/download").responses;
    expect(Object.keys(download["200"]?.content ?? {}).sort()).toEqual(["application/json", "text/plain"]);
    expect(Object.keys(download["200"]?.content?.["application/json"]?.schema?.properties ?? {})).toEqual(expect.arrayContaining(["output", "output_sha256", "output_bytes"]));
    expect(Object.keys(download)).toEqual(expect.arrayContaining(["404", "409", "410"]));
  });

  it("submits the documented examples as they are: each is accepted", async () => {
    const submit = op("post", "/v1/jobs").requestBody?.content["application/json"];
    for (const [name, e] of Object.entries(submit?.examples ?? {})) {
      const body = e.value as Record<string, unknown>;
      // The file and S3 example need an uploaded file and an allowed bucket: the others go as written.
      if (typeof body.input === "string" && body.input.startsWith("file_")) continue;
      const res = await h.call("POST", "/v1/jobs", { json: body });
      expect({ name, status: res.status, body: res.status === 201 ? "" : await res.text() }).toMatchObject({ status: 201 });
    }
  });
});
