import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { expectProblem, startApi, type ApiHarness } from "./api-harness.js";

/** Bodies are checked as sent (no type coercion); query strings are converted from text. */
describe("strict bodies, converted query strings", () => {
  let h: ApiHarness & { key: string };
  beforeAll(async () => {
    h = await startApi();
  });
  afterAll(async () => {
    await h.stop();
  });

  it.each([
    [{ model: "tiny-gpt2", input: 5 }, "/input"],
    [{ model: "tiny-gpt2", input: "x", parameters: { max_new_tokens: "12" } }, "/parameters/max_new_tokens"],
    [{ model: "tiny-gpt2", input: "x", parameters: { temperature: true } }, "/parameters/temperature"],
    [{ model: "tiny-gpt2", input: "x", parameters: { stop: "END" } }, "/parameters/stop"],
    [{ model: "tiny-gpt2", input: "x", timeout_seconds: "60" }, "/timeout_seconds"],
  ])("refuses %j with 422 naming %s", async (json, field) => {
    const res = await h.call("POST", "/v1/jobs", { json });
    const p = await expectProblem(res, 422, "validation_failed");
    expect(String(p.detail)).toContain(field);
  });

  it("still reads numbers in query strings", async () => {
    const res = await h.call("GET", "/v1/jobs?limit=2");
    expect(res.status).toBe(200);
    expect(((await res.json()) as { jobs: unknown[] }).jobs.length).toBeLessThanOrEqual(2);
    await expectProblem(await h.call("GET", "/v1/jobs?limit=two"), 422, "validation_failed");
  });
});
