import { execFileSync } from "node:child_process";
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, rmSync, writeFileSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import Database from "better-sqlite3";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { databasePath } from "../../src/coordinator/coordinator.js";
import { assertBuilt, waitFor, type ApiResponse } from "../e2e/cluster.js";
import { checkInvariants } from "./invariants.js";
import { Rig } from "./rig.js";

/**
 * A real full disk: the coordinator's data dir (SQLite file, WAL, result files) lives on a small
 * tmpfs that the test fills with a filler file until the kernel answers ENOSPC. Mounting needs
 * root; CI and the dev machine run as root, and a test that cannot make its fault fails (it is
 * not skipped).
 */
const DISK_BYTES = 16 * 1024 * 1024;

/** Writes `file` until the file system is full; returns the bytes written. */
function fillDisk(file: string): number {
  const fd = openSync(file, "w");
  let bytes = 0;
  try {
    // Big writes first, then smaller ones for the last partly free pages.
    for (const size of [1 << 20, 1 << 16, 4096, 512, 1]) {
      const chunk = Buffer.alloc(size, 0x61);
      for (;;) {
        try {
          const n = writeSync(fd, chunk);
          bytes += n;
          if (n < size) break;
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === "ENOSPC") break;
          throw err;
        }
      }
    }
  } finally {
    closeSync(fd);
  }
  return bytes;
}

/** Every file under the result store, relative to it. */
function resultFiles(dataDir: string): string[] {
  const root = path.join(dataDir, "results");
  if (!existsSync(root)) return [];
  return readdirSync(root, { recursive: true, withFileTypes: true })
    .filter((d) => d.isFile())
    .map((d) => path.relative(root, path.join(d.parentPath, d.name)))
    .sort();
}

/** Checks a 503 problem+json with Retry-After; returns "what → 503, Retry-After n" for the summary. */
function expectUnavailable(res: ApiResponse, what: string): string {
  expect(res.status, `${what}: ${JSON.stringify(res.body)}`).toBe(503);
  expect(res.headers.get("content-type")).toMatch(/^application\/problem\+json/);
  expect(Number(res.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
  expect(res.body).toMatchObject({ status: 503, code: "unavailable", retryable: true });
  return `${what} → 503, Retry-After ${res.headers.get("retry-after")}`;
}

describe("reliability: disk full", { timeout: 120_000 }, () => {
  let dir: string | undefined;
  let disk: string | undefined;
  let mounted = false;
  let rig: Rig | undefined;

  beforeAll(() => {
    assertBuilt();
    if (process.getuid?.() !== 0) {
      throw new Error("the disk-full scenario mounts a small tmpfs to fill, which needs root: run the reliability suite as root (CI does)");
    }
    dir = mkdtempSync(path.join(tmpdir(), "aitbc-full-"));
    disk = path.join(dir, "disk");
    mkdirSync(disk);
    execFileSync("mount", ["-t", "tmpfs", "-o", `size=${DISK_BYTES},mode=0700`, "aitbc-full", disk]);
    mounted = true;
  });

  afterEach(async (ctx) => {
    if (ctx.task.result?.state === "fail" && rig !== undefined) console.error(await rig.failureReport(ctx.task.name));
    await rig?.close();
    rig = undefined;
  });

  afterAll(() => {
    // Every process is gone (afterEach), so nothing holds a file on the mount.
    if (mounted && disk !== undefined) execFileSync("umount", [disk]);
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
  });

  it("disk full: submits and uploads get 503 with Retry-After, a result is not half-committed, nothing partial is written; all recovers when space returns", async () => {
    const dataDir = path.join(disk!, "data");
    const filler = path.join(disk!, "filler");
    // A lease longer than the outage: the job is not requeued, so the same attempt's result,
    // refused while the disk is full, is the one committed afterwards.
    const r = (rig = await Rig.start({ AITBC_COORDINATOR_SCHEDULER_LEASE_TTL: "20s" }, { dataDir }));
    const c = r.cluster;
    await r.startMiner({ name: "full-disk", tokensPerSecond: 20 });
    const minerId = c.minerId("full-disk");
    const accepted: string[] = [];
    const running = await c.submit({ model: "tiny-gpt2", input: "finishes on a full disk", parameters: { max_new_tokens: 60, seed: 13 } });
    accepted.push(running);
    await c.waitForJob(running, (j) => j.status === "running" && (j.progress as number) > 0, "running with progress");

    const filled = fillDisk(filler);
    r.op(`disk full after ${filled} filler bytes`);
    expect(() => writeFileSync(path.join(disk!, "probe"), "x")).toThrow(/ENOSPC/);

    // The client API: writes answer 503 + Retry-After (never 500), reads still answer.
    const refusedSubmit = { model: "tiny-gpt2", input: "submitted on a full disk", parameters: { max_new_tokens: 4, seed: 14 } };
    const submit = (): Promise<Response> =>
      fetch(`${c.baseUrl}/v1/jobs`, {
        method: "POST",
        headers: { authorization: `Bearer ${c.clientKey}`, "content-type": "application/json", "idempotency-key": "full-disk-1" },
        body: JSON.stringify(refusedSubmit),
      });
    const asApi = async (res: Response): Promise<ApiResponse> => ({ status: res.status, headers: res.headers, body: (await res.json()) as Record<string, unknown> });
    const answers = [
      expectUnavailable(await asApi(await submit()), "POST /v1/jobs (Idempotency-Key)"),
      expectUnavailable(await c.api("POST", "/v1/jobs", { model: "tiny-gpt2", input: "without an idempotency key", parameters: { max_new_tokens: 4 } }), "POST /v1/jobs (no Idempotency-Key)"),
    ];
    const upload = (): Promise<Response> =>
      fetch(`${c.baseUrl}/v1/files`, { method: "POST", headers: { authorization: `Bearer ${c.clientKey}`, "content-type": "text/plain" }, body: "a prompt from a file" });
    answers.push(expectUnavailable(await asApi(await upload()), "POST /v1/files"));
    expect((await c.api("GET", `/v1/jobs/${running}`)).status).toBe(200);
    expect((await c.api("GET", "/v1/jobs")).status).toBe(200);
    expect((await c.api("GET", `/v1/jobs/${running}/download`)).status).toBe(409);

    // The miner finishes while the disk is full: its result cannot be stored, so it is neither
    // committed nor acknowledged, and the miner is asked to send it again later.
    await waitFor(
      "the result refused for lack of space",
      () => Promise.resolve(r.coordinatorLogs("storage unavailable: miner to retry").some((l) => l.jobId === running && l.frame === "result")),
      (v) => v,
      20_000,
    );
    expect(await c.job(running)).toMatchObject({ status: "running", attempt: 1, result: null });
    expect(resultFiles(dataDir)).toEqual([]);
    // The miner reconnects; resuming its lease is a write too, so its hello is refused the same
    // way, and the refused connection leaves no session behind.
    await waitFor(
      "the reconnecting miner's hello refused for lack of space",
      () => Promise.resolve(r.coordinatorLogs("storage unavailable: miner to retry").some((l) => l.frame === "hello")),
      (v) => v,
      20_000,
    );
    expect((await c.api("GET", "/readyz")).body).toMatchObject({ status: "ready", miners: 0 });

    const refusedFrames: Record<string, number> = {};
    for (const l of r.coordinatorLogs("storage unavailable: miner to retry")) refusedFrames[l.frame as string] = (refusedFrames[l.frame as string] ?? 0) + 1;
    rmSync(filler);
    r.op("disk space back");
    const done = await c.waitForJob(running, (j) => j.status === "completed", "completed", 30_000);
    expect(done).toMatchObject({ status: "completed", attempt: 1, miner_id: minerId });
    const changes = (await c.events(running)).map((e) => e.event);
    expect(changes.filter((e) => e === "completed")).toHaveLength(1);
    expect(changes).not.toContain("requeued");

    // The refused submit left nothing behind: its Idempotency-Key makes a new job now, once.
    const retried = await submit();
    expect(retried.status).toBe(201);
    const fresh = ((await retried.json()) as { job_id: string }).job_id;
    accepted.push(fresh);
    const again = await submit();
    expect(again.status).toBe(200);
    expect(((await again.json()) as { job_id: string }).job_id).toBe(fresh);
    expect((await upload()).status).toBe(201);
    expect(await c.waitForJob(fresh, (j) => j.status === "completed", "completed")).toMatchObject({ attempt: 1 });

    await r.stopAll();
    const report = checkInvariants(dataDir, accepted);
    expect(report.violations).toEqual([]);
    // Exactly the jobs that got a 2xx, and one result file per completed job, nothing else.
    expect(report.jobs).toBe(accepted.length);
    expect(report.byStatus).toEqual({ completed: 2 });
    const db = new Database(databasePath(dataDir), { readonly: true, fileMustExist: true });
    try {
      expect(db.prepare("SELECT COUNT(*) AS n FROM files").get()).toEqual({ n: 1 });
      const locations = (db.prepare("SELECT json_extract(result, '$.location') AS l FROM jobs ORDER BY l").all() as { l: string }[]).map((x) => x.l);
      expect(resultFiles(dataDir)).toEqual(locations.sort());
    } finally {
      db.close();
    }
    console.log(
      `disk full (${filled} filler bytes on a ${DISK_BYTES / 2 ** 20} MiB tmpfs): ${answers.join("; ")}; miner frames refused: ${JSON.stringify(refusedFrames)}; ` +
        `after the filler was deleted: the job completed at attempt ${done.attempt as number}, the store holds the ${report.jobs} accepted jobs, 1 file, ${resultFiles(dataDir).length} result files`,
    );
  });
});
