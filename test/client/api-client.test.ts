import http from "node:http";
import type { AddressInfo } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { Backoff } from "../../src/common/backoff.js";
import { ApiClient, type JobStreamEvent } from "../../src/client/api-client.js";
import { ApiError } from "../../src/client/api-error.js";

/**
 * followJob's reconnect path needs a stream that drops mid-job, which the real coordinator does
 * not do on demand; a tiny SSE server on port 0 plays that part. Everything else of the client is
 * tested against the real coordinator in jobs-cli.test.ts.
 */
const servers: http.Server[] = [];
afterEach(async () => {
  for (const s of servers.splice(0)) await new Promise((r) => s.close(r));
});

async function serve(handler: http.RequestListener): Promise<string> {
  const server = http.createServer(handler);
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

const snapshot = (status: string): string =>
  `event: snapshot\ndata: ${JSON.stringify({
    job_id: "job_a1", status, model: "m", progress: 0, miner_id: null, created_at: "2026-01-01T00:00:00.000Z", started_at: null,
    completed_at: null, result: null, priority: "normal", attempt: 1, cancel_requested: false, error: null, parameters: {},
    requirements: {}, output_config: { destination: "local", format: "json" }, timeout_seconds: 60,
  })}\n\n`;

describe("ApiClient.followJob", () => {
  it("resumes after a dropped stream with Last-Event-ID and ends at the terminal state", async () => {
    const seen: (string | undefined)[] = [];
    const url = await serve((req, res) => {
      seen.push(req.headers["last-event-id"] as string | undefined);
      expect(req.headers.authorization).toBe("Bearer k1");
      res.writeHead(200, { "content-type": "text/event-stream" });
      if (seen.length === 1) {
        res.write(snapshot("queued"));
        res.write('id: 2\nevent: running\ndata: {"status":"running","miner_id":"m1"}\n\n');
        res.write('event: progress\ndata: {"progress":50,"tokens":5,"max_tokens":10,"tokens_per_second":9.5,"attempt":1}\n\n');
        setTimeout(() => res.destroy(), 20); // the connection drops mid-job
      } else {
        res.write(snapshot("running"));
        res.end('id: 3\nevent: completed\ndata: {"status":"completed"}\n\n');
      }
    });
    const client = new ApiClient({ url, key: "k1", backoff: new Backoff({ baseMs: 10, maxMs: 20 }) });
    const events: JobStreamEvent[] = [];
    for await (const e of client.followJob("job_a1")) events.push(e);
    expect(seen).toEqual([undefined, "2"]);
    expect(events.map((e) => (e.type === "state" ? `${e.state}#${e.seq}` : e.type))).toEqual([
      "snapshot", "running#2", "progress", "reconnecting", "snapshot", "completed#3",
    ]);
    expect(events[2]).toEqual({ type: "progress", progress: 50, tokens: 5, maxTokens: 10, tokensPerSecond: 9.5, attempt: 1 });
  });

  it("throws a 4xx as an ApiError with the problem's code and detail; abort just ends the stream", async () => {
    const url = await serve((req, res) => {
      if (req.headers.authorization !== "Bearer good") {
        res.writeHead(401, { "content-type": "application/problem+json" });
        res.end(JSON.stringify({ type: "x", title: "Unauthorized", status: 401, code: "unauthorized", detail: "the API key is not valid" }));
        return;
      }
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.write(snapshot("queued"));
    });
    const bad = new ApiClient({ url, key: "bad" });
    const err = await (async () => {
      for await (const e of bad.followJob("job_a1")) void e;
    })().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ApiError);
    expect((err as ApiError).oneLine()).toBe("the API key is not valid (unauthorized, HTTP 401)");

    const controller = new AbortController();
    const got: string[] = [];
    for await (const e of new ApiClient({ url, key: "good" }).followJob("job_a1", { signal: controller.signal })) {
      got.push(e.type);
      controller.abort();
    }
    expect(got).toEqual(["snapshot"]);
  });
});
