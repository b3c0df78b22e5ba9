import { existsSync } from "node:fs";
import path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { waitFor } from "../e2e/cluster.js";
import { expectProblem, startApi, submit, type ApiHarness, type TestClock } from "./api-harness.js";

/**
 * What a tenant may keep stored, and for how long: quotas on uploaded files and stored results
 * (429 storage_quota_exceeded naming the limit), deletion by the owner (DELETE /v1/files/{id},
 * DELETE /v1/jobs/{id}/result) and the retention sweep. A real coordinator on a real SQLite file.
 */
let h: (ApiHarness & { key: string }) | undefined;

afterEach(async () => {
  await h?.stop();
  h = undefined;
});

const upload = (hh: ApiHarness, text: string): Promise<Response> => hh.call("POST", "/v1/files", { body: text, headers: { "content-type": "text/plain" } });

describe("storage quotas", () => {
  it("an upload past the tenant's file quota is refused with the limit named; deleting a file makes room", async () => {
    const hh = (h = await startApi({ "limits.max_file_bytes_per_tenant": 100 }));
    const first = (await (await upload(hh, "x".repeat(60))).json()) as { file_id: string };
    const body = await expectProblem(await upload(hh, "y".repeat(60)), 429, "storage_quota_exceeded");
    expect(body).toMatchObject({ quota: "files", limit_bytes: 100, used_bytes: 60 });
    expect(body.detail).toContain("100-byte quota");
    // Another tenant has its own quota.
    const other = await hh.newKey("globex");
    expect((await hh.call("POST", "/v1/files", { key: other.key, body: "y".repeat(60), headers: { "content-type": "text/plain" } })).status).toBe(201);
    expect((await hh.call("DELETE", `/v1/files/${first.file_id}`)).status).toBe(204);
    await expectProblem(await hh.call("DELETE", `/v1/files/${first.file_id}`), 404, "file_not_found");
    await expectProblem(await hh.call("POST", "/v1/jobs", { json: { model: "gpt2", input: first.file_id } }), 422, "file_not_found");
    expect((await upload(hh, "y".repeat(60))).status).toBe(201);
  });

  it("a submit while the tenant's stored results are over its quota is refused; deleting a result makes room", async () => {
    const hh = (h = await startApi({ "limits.max_result_bytes_per_tenant": 20 }));
    const a = await submit(hh);
    await hh.complete(a, "twenty-one bytes long");
    const body = await expectProblem(await hh.call("POST", "/v1/jobs", { json: { model: "gpt2", input: "more" } }), 429, "storage_quota_exceeded");
    expect(body).toMatchObject({ quota: "results", limit_bytes: 20, used_bytes: 21 });
    expect((await hh.call("DELETE", `/v1/jobs/${a}/result`)).status).toBe(204);
    expect((await hh.call("POST", "/v1/jobs", { json: { model: "gpt2", input: "more" } })).status).toBe(201);
  });
});

describe("DELETE /v1/jobs/{id}/result", () => {
  it("removes the stored output, keeps the record, answers the download with 410, and is idempotent", async () => {
    const hh = (h = await startApi());
    const id = await submit(hh);
    const done = await hh.complete(id, "to be deleted");
    const file = path.join(hh.dir, "results", done.result!.location);
    expect(existsSync(file)).toBe(true);
    expect((await hh.call("DELETE", `/v1/jobs/${id}/result`)).status).toBe(204);
    expect(existsSync(file)).toBe(false);
    const status = (await (await hh.call("GET", `/v1/jobs/${id}`)).json()) as { status: string; result: Record<string, unknown> };
    expect(status.status).toBe("completed");
    expect(status.result).toMatchObject({ available: false, removed: { reason: "deleted" }, output_bytes: 13 });
    await expectProblem(await hh.call("GET", `/v1/jobs/${id}/download`), 410, "result_deleted");
    expect((await hh.call("DELETE", `/v1/jobs/${id}/result`)).status).toBe(204);
    expect(await hh.coordinator.store.usage("acme")).toEqual({ fileBytes: 0, resultBytes: 0 });
  });

  it("a job that is not completed has no result to delete: 409", async () => {
    const hh = (h = await startApi());
    const id = await submit(hh);
    await expectProblem(await hh.call("DELETE", `/v1/jobs/${id}/result`), 409, "job_not_completed");
    await expectProblem(await hh.call("DELETE", "/v1/jobs/job_nosuchjob/result"), 404, "job_not_found");
  });
});

describe("[results] retention", () => {
  it("the sweep deletes results and files older than the retention; the job says its result expired", async () => {
    const clock: TestClock = { now: Date.now() - 3 * 86_400_000 };
    const hh = (h = await startApi({ "results.retention": "1d", "results.retention_sweep": "1s" }, undefined, clock));
    // Three days ago: a file uploaded and a job completed. Now: a fresh job.
    const oldFile = (await (await upload(hh, "an old prompt")).json()) as { file_id: string };
    const old = await submit(hh);
    const oldJob = await hh.complete(old, "old output", clock.now);
    clock.now = Date.now();
    const fresh = await submit(hh);
    await hh.complete(fresh, "fresh output");
    const oldStatus = await waitFor(
      "the old result expired",
      async () => (await (await hh.call("GET", `/v1/jobs/${old}`)).json()) as { result: Record<string, unknown> },
      (j) => j.result.available === false,
      15_000,
    );
    expect(oldStatus.result).toMatchObject({ removed: { reason: "expired" } });
    await expectProblem(await hh.call("GET", `/v1/jobs/${old}/download`), 410, "result_expired");
    // The sweep commits the removal first, then deletes the file.
    await waitFor("the old result file deleted", () => Promise.resolve(existsSync(path.join(hh.dir, "results", oldJob.result!.location))), (e) => !e, 15_000);
    // Uploaded files expire after the results, in the same pass: wait for that step too.
    await waitFor("the old upload expired", () => hh.coordinator.store.usage("acme"), (u) => u.fileBytes === 0, 15_000);
    await expectProblem(await hh.call("POST", "/v1/jobs", { json: { model: "gpt2", input: oldFile.file_id } }), 422, "file_not_found");
    expect((await hh.call("GET", `/v1/jobs/${fresh}/download`)).status).toBe(200);
  });
});
