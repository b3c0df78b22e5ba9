import { writeFileSync } from "node:fs";
import { createServer, type Socket } from "node:net";
import path from "node:path";
import { afterEach, beforeAll, describe, expect, it } from "vitest";
import { ApiClient } from "../../src/client/api-client.js";
import { ApiError } from "../../src/client/api-error.js";
import { silentLogger } from "../../src/common/logger.js";
import { loadCoordinatorConfig } from "../../src/coordinator/config.js";
import { Coordinator } from "../../src/coordinator/coordinator.js";
import { aitbc, assertBuilt, claim, cleanup, run, startCoordinator, tempDir } from "./cli-harness.js";

/**
 * Uploads and results as a client sees them: an over-size upload gets the 413 (naming the limit)
 * even while the client is still sending, never "unreachable"; 201 answers say where the new
 * resource is; `jobs status` and `jobs history` print what a person reads.
 */
beforeAll(() => assertBuilt());
const coordinators: Coordinator[] = [];
afterEach(async () => {
  for (const c of coordinators.splice(0)) await c.stop();
  await cleanup();
});

async function smallLimits(): Promise<{ url: string; key: string; dir: string }> {
  const dir = tempDir("aitbc-upload-");
  const config = loadCoordinatorConfig(undefined, {
    optional: true,
    env: {},
    overrides: { "server.port": 0, "storage.data_dir": dir, "log.level": "silent", "limits.max_file_size": "1KiB", "server.body_limit": "4KiB" },
  });
  const coordinator = new Coordinator({ config, log: silentLogger() });
  coordinators.push(coordinator);
  const url = await coordinator.start();
  const { key } = await coordinator.store.createKey("client", "t", "t", Date.now());
  return { url, key, dir };
}

describe("uploads and results", { timeout: 120_000 }, () => {
  it("jobs submit --input-file of 20 MB over a 1 KiB limit: the 413 with the limit, every time, exit 3", async () => {
    const s = await smallLimits();
    const cwd = tempDir("aitbc-cwd-");
    writeFileSync(path.join(cwd, "big.txt"), Buffer.alloc(20_000_000, "x"));
    // The coordinator answers before the body is sent; a reset would show as EPIPE (unreachable).
    for (let i = 0; i < 3; i++) {
      const r = await aitbc(["jobs", "submit", "--model", "tiny-gpt2", "--input-file", "big.txt", "--url", s.url, "--key", s.key], { cwd });
      expect(r.stderr).toBe(
        "aitbc: the file is 20000000 bytes; this coordinator accepts at most 1024 bytes ([limits] max_file_size) (payload_too_large, HTTP 413)\n",
      );
      expect(r.code).toBe(3);
    }
  });

  it("a submit body over [server] body_limit: 413 naming it, with limit_bytes", async () => {
    const s = await smallLimits();
    const res = await fetch(`${s.url}/v1/jobs`, {
      method: "POST",
      headers: { authorization: `Bearer ${s.key}`, "content-type": "application/json" },
      body: JSON.stringify({ model: "tiny-gpt2", input: "x".repeat(5000) }),
    });
    expect(res.status).toBe(413);
    const problem = (await res.json()) as { code: string; detail: string; limit_bytes: number };
    expect(problem).toMatchObject({ code: "payload_too_large", limit_bytes: 4096 });
    expect(problem.detail).toMatch(/at most 4096 bytes \(\[server\] body_limit\)/);
  });

  it("a chunked upload (no Content-Length) over the limit: the same 413 naming it", async () => {
    const s = await smallLimits();
    const chunk = Buffer.alloc(600, "y");
    const body = new ReadableStream<Uint8Array>({
      start(controller) {
        for (let i = 0; i < 4; i++) controller.enqueue(chunk);
        controller.close();
      },
    });
    const res = await fetch(`${s.url}/v1/files`, {
      method: "POST",
      headers: { authorization: `Bearer ${s.key}`, "content-type": "text/plain" },
      body,
      duplex: "half",
    });
    expect(res.status).toBe(413);
    const problem = (await res.json()) as { code: string; detail: string; limit_bytes: number };
    expect(problem).toMatchObject({ code: "payload_too_large", limit_bytes: 1024, detail: "the file is over 1024 bytes, the most this coordinator accepts ([limits] max_file_size)" });
  });

  it("an upload cut by a reset (an older coordinator, a proxy) says what most likely happened, not 'unreachable'", async () => {
    const sockets: Socket[] = [];
    const server = createServer((socket) => {
      sockets.push(socket);
      socket.once("data", () => socket.resetAndDestroy());
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    try {
      const { port } = server.address() as { port: number };
      const client = new ApiClient({ url: `http://127.0.0.1:${port}`, key: "k" });
      const err = await client.uploadFile(Buffer.alloc(8_000_000, "x")).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(ApiError);
      expect((err as ApiError).code).toBe("upload_cut");
      expect((err as ApiError).message).toMatch(/closed the connection while 8000000 bytes were being uploaded: most likely the file is larger than it accepts/);
    } finally {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });

  it("201 answers carry a Location that GETs the new job; an idempotent replay (200) carries none", async () => {
    const s = await startCoordinator();
    const call = (method: string, route: string, body?: string, headers: Record<string, string> = {}): Promise<Response> =>
      fetch(`${s.url}${route}`, { method, headers: { authorization: `Bearer ${s.key}`, ...headers }, ...(body === undefined ? {} : { body }) });

    const file = await call("POST", "/v1/files", "a prompt", { "content-type": "text/plain" });
    expect(file.status).toBe(201);
    const { file_id } = (await file.json()) as { file_id: string };
    expect(file.headers.get("location")).toBe(`/v1/files/${file_id}`);

    const submit = JSON.stringify({ model: "tiny-gpt2", input: file_id });
    const job = await call("POST", "/v1/jobs", submit, { "content-type": "application/json", "idempotency-key": "once" });
    expect(job.status).toBe(201);
    const { job_id } = (await job.json()) as { job_id: string };
    expect(job.headers.get("location")).toBe(`/v1/jobs/${job_id}`);
    const followed = await call("GET", job.headers.get("location")!);
    expect(followed.status).toBe(200);
    expect(((await followed.json()) as { job_id: string }).job_id).toBe(job_id);

    const replay = await call("POST", "/v1/jobs", submit, { "content-type": "application/json", "idempotency-key": "once" });
    expect(replay.status).toBe(200);
    expect(replay.headers.get("location")).toBeNull();
  });

  it("jobs status rounds tok/s and says what the result's bytes are; history takes --from or --to alone", async () => {
    const s = await startCoordinator();
    const cwd = tempDir("aitbc-cwd-");
    const conn = ["--url", s.url, "--key", s.key];
    const { job_id } = await new ApiClient({ url: s.url, key: s.key }).submitJob({ model: "tiny-gpt2", input: "Hello" });
    const ref = await claim(s.coordinator, job_id);
    await run(s.coordinator, ref);
    const put = await s.coordinator.context.results.put(job_id, ref.attempt, Buffer.from("generated"));
    const outcome = await s.coordinator.store.commitResult(
      ref,
      { sha256: put.sha256, bytes: put.bytes, location: put.location, finishReason: "length", usage: { prompt_tokens: 1, completion_tokens: 3 }, tokensPerSecond: 477.3483146551118, attempt: ref.attempt },
      Date.now(),
    );
    expect(outcome).toBe("committed");

    const status = await aitbc(["jobs", "status", job_id, ...conn], { cwd });
    expect(status.code, status.stderr).toBe(0);
    expect(status.stdout).toMatch(/^result +9 bytes of text, 3 tokens, 477\.3 tok\/s, finish length;/m);

    const today = new Date().toISOString().slice(0, 10);
    for (const range of [["--from", today], ["--to", today], []]) {
      const r = await aitbc(["jobs", "history", ...range, "--json", ...conn], { cwd });
      expect(r.code, `${range.join(" ")}: ${r.stderr}`).toBe(0);
      expect((JSON.parse(r.stdout) as { jobs: { job_id: string }[] }).jobs.map((j) => j.job_id)).toEqual([job_id]);
    }
    const yesterday = new Date(Date.now() - 86_400_000).toISOString().slice(0, 10);
    const before = await aitbc(["jobs", "history", "--to", yesterday, ...conn], { cwd });
    expect(before.code, before.stderr).toBe(0);
    expect(before.stderr).toMatch(/^0 of 0 job\(s\)/m);
  });
});
