import { unlinkSync } from "node:fs";
import path from "node:path";
import Database from "better-sqlite3";
import { describe, expect, it } from "vitest";
import { databasePath } from "../../src/coordinator/coordinator.js";
import { expectProblem, startApi, submit } from "./api-harness.js";

/**
 * Faults below the API: storage that is busy for a while (503 with Retry-After, then it
 * recovers), and our own broken state (500 as a problem, no internals). A real full disk is
 * test/reliability/disk-full.test.ts.
 */
describe("storage faults", () => {
  it("answers 503 with Retry-After, not 500, while the database is locked, and recovers", async () => {
    const h = await startApi();
    try {
      const queued = await submit(h);
      // Another process holding the write lock (e.g. a long `aitbc keys` run or a backup).
      const other = new Database(databasePath(h.dir));
      other.exec("BEGIN EXCLUSIVE");
      try {
        const res = await h.call("POST", "/v1/jobs", { json: { model: "gpt2", input: "while locked" } });
        const p = await expectProblem(res, 503, "unavailable");
        expect(Number(res.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
        expect(p.retryable).toBe(true);
      } finally {
        other.exec("ROLLBACK");
        other.close();
      }
      expect(((await (await h.call("GET", `/v1/jobs/${queued}`)).json()) as { status: string }).status).toBe("queued");
      await submit(h);
    } finally {
      await h.stop();
    }
  });
});

describe("our own faults", () => {
  it("answers 500 as a problem without internals when a committed result's file is gone", async () => {
    const h = await startApi();
    try {
      const id = await submit(h);
      const job = await h.complete(id, "soon lost");
      unlinkSync(path.join(h.dir, "results", job.result!.location));
      const res = await h.call("GET", `/v1/jobs/${id}/download`);
      await expectProblem(res.clone(), 500, "internal");
      expect(await res.text()).not.toContain(h.dir); // no file paths leak
      // The server keeps serving.
      expect((await h.call("GET", `/v1/jobs/${id}`)).status).toBe(200);
    } finally {
      await h.stop();
    }
  });
});
