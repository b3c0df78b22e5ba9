import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { expectProblem, startApi, submit } from "./api-harness.js";

/**
 * Jobs survive a coordinator restart: the same data dir, a new process object, the same answers.
 * And GET /v1/jobs/{id}/events (Server-Sent Events).
 */
const dir = mkdtempSync(path.join(os.tmpdir(), "aitbc-api-restart-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("restart", () => {
  it("keeps every job, in every state, unchanged across a restart on the same data dir", async () => {
    const a = await startApi({ tenants: { acme: { s3_buckets: ["acme-out"] } } }, dir);
    const ids = {
      queued: await submit(a, { parameters: { seed: 7, temperature: 0.5 }, priority: "high", output_config: { destination: "s3://acme-out/x", format: "text" } }),
      running: await submit(a),
      completed: await submit(a),
      cancelled: await submit(a),
      cancelRequested: await submit(a),
    };
    await a.run(ids.running);
    await a.complete(ids.completed, "kept across restarts");
    const keyed = { "idempotency-key": "restart-key" };
    const idem = (await (await a.call("POST", "/v1/jobs", { json: { model: "gpt2-idem", input: "once" }, headers: keyed })).json()) as { job_id: string };
    expect((await a.call("DELETE", `/v1/jobs/${ids.cancelled}`)).status).toBe(200);
    await a.run(ids.cancelRequested);
    expect((await a.call("DELETE", `/v1/jobs/${ids.cancelRequested}`)).status).toBe(202);

    const snapshot = async (h: typeof a) => {
      const out: Record<string, unknown> = {};
      for (const id of Object.values(ids)) out[id] = await (await h.call("GET", `/v1/jobs/${id}`)).json();
      out.list = await (await h.call("GET", "/v1/jobs?limit=100")).json();
      out.download = await (await h.call("GET", `/v1/jobs/${ids.completed}/download`)).text();
      return out;
    };
    const before = await snapshot(a);
    await a.stop();
    await expect(fetch(`${a.url}/healthz`)).rejects.toThrow();

    const b = await startApi({ tenants: { acme: { s3_buckets: ["acme-out"] } } }, dir);
    try {
      // Keys live in the store too: the old key still works against the new process.
      const res = await b.call("GET", `/v1/jobs/${ids.queued}`, { key: a.key });
      expect(res.status).toBe(200);
      const after = await snapshot({ ...b, call: (m, r, o = {}) => b.call(m, r, { key: a.key, ...o }) });
      expect(after).toEqual(before);
      expect(before[ids.completed]).toMatchObject({ status: "completed" });
      expect(before[ids.cancelled]).toMatchObject({ status: "cancelled" });
      expect(before[ids.cancelRequested]).toMatchObject({ status: "running", cancel_requested: true });
      expect(before.download).toContain("kept across restarts");
      // The Idempotency-Key still maps to the same job.
      const retried = await b.call("POST", "/v1/jobs", { key: a.key, json: { model: "gpt2-idem", input: "once" }, headers: keyed });
      expect(retried.status).toBe(200);
      expect(((await retried.json()) as { job_id: string }).job_id).toBe(idem.job_id);
    } finally {
      await b.stop();
    }
  });
});

describe("restart after a crash between writing a result and committing it", () => {
  it("removes result files no committed result points to and temp files; keeps committed ones and unknown jobs' files", async () => {
    const data = mkdtempSync(path.join(os.tmpdir(), "aitbc-api-sweep-"));
    try {
      const a = await startApi({}, data);
      const completed = await submit(a);
      const running = await submit(a);
      await a.complete(completed, "the committed output");
      await a.run(running);
      await a.stop();
      // What a crash can leave: an uncommitted attempt of the running job, a stale attempt and a
      // temp file beside a committed result, and files of a job this store never had.
      const results = path.join(data, "results");
      const plant = (rel: string): void => {
        mkdirSync(path.dirname(path.join(results, rel)), { recursive: true });
        writeFileSync(path.join(results, rel), "left behind");
      };
      plant(`${running}/attempt-1.txt`);
      plant(`${completed}/attempt-7.txt`);
      plant(`${completed}/attempt-1.txt.0a1b2c.tmp`);
      plant("job_elsewhere1/attempt-1.txt");

      const b = await startApi({}, data);
      try {
        expect(readdirSync(path.join(results, completed))).toEqual(["attempt-1.txt"]);
        expect(existsSync(path.join(results, running, "attempt-1.txt"))).toBe(false);
        expect(existsSync(path.join(results, "job_elsewhere1", "attempt-1.txt"))).toBe(true);
        const download = await b.call("GET", `/v1/jobs/${completed}/download`, { key: a.key });
        expect(await download.text()).toContain("the committed output");
      } finally {
        await b.stop();
      }
    } finally {
      rmSync(data, { recursive: true, force: true });
    }
  });
});

interface SseEvent {
  event: string;
  id?: string;
  data: Record<string, unknown>;
}

/** Reads SSE frames from a fetch body until `stop` says so or the stream ends. */
async function readEvents(res: Response, stop: (events: SseEvent[]) => boolean): Promise<{ events: SseEvent[]; ended: boolean }> {
  const reader = res.body!.getReader();
  const decoder = new TextDecoder();
  const events: SseEvent[] = [];
  let buffer = "";
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return { events, ended: true };
    buffer += decoder.decode(value as Uint8Array, { stream: true });
    let cut: number;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const fields = Object.fromEntries(
        frame
          .split("\n")
          .filter((l) => !l.startsWith(":") && l.includes(":"))
          .map((l) => [l.slice(0, l.indexOf(":")), l.slice(l.indexOf(":") + 1).trim()]),
      ) as Record<string, string>;
      if (fields.event === undefined) continue;
      events.push({ event: fields.event, ...(fields.id === undefined ? {} : { id: fields.id }), data: JSON.parse(fields.data ?? "null") as Record<string, unknown> });
    }
    if (stop(events)) {
      await reader.cancel();
      return { events, ended: false };
    }
  }
}

describe("GET /v1/jobs/{id}/events", () => {
  it("streams a snapshot, then state changes live, and ends after the terminal state", async () => {
    const h = await startApi();
    try {
      const id = await submit(h);
      const res = await h.call("GET", `/v1/jobs/${id}/events`);
      expect(res.status).toBe(200);
      expect(res.headers.get("content-type")).toMatch(/^text\/event-stream/);
      const reading = readEvents(res, () => false);
      // Give the stream its snapshot before the job moves, then move it.
      await new Promise((r) => setTimeout(r, 100));
      await h.complete(id, "streamed");
      const { events, ended } = await reading;
      expect(ended).toBe(true);
      expect(events[0]).toMatchObject({ event: "snapshot", data: { job_id: id, status: "queued" } });
      const states = events.slice(1).map((e) => e.event).filter((e) => e !== "progress");
      expect(states).toEqual(expect.arrayContaining(["queued", "assigned", "running", "completed"]));
      expect(states.at(-1)).toBe("completed");
      const ids = events.filter((e) => e.id !== undefined).map((e) => Number(e.id));
      expect(ids).toEqual([...ids].sort((x, y) => x - y));
    } finally {
      await h.stop();
    }
  });

  it("for a completed job replays its history and ends by itself; Last-Event-ID skips what was seen", async () => {
    const h = await startApi();
    try {
      const id = await submit(h);
      await h.complete(id, "done");
      const full = await readEvents(await h.call("GET", `/v1/jobs/${id}/events`), () => false);
      expect(full.ended).toBe(true);
      expect(full.events[0]).toMatchObject({ event: "snapshot", data: { status: "completed" } });
      expect(full.events.at(-1)?.event).toBe("completed");
      const running = full.events.find((e) => e.event === "running");
      expect(running?.id).toBeDefined();

      const resumed = await readEvents(await h.call("GET", `/v1/jobs/${id}/events`, { headers: { "last-event-id": running!.id! } }), () => false);
      expect(resumed.ended).toBe(true);
      // The output comes whole in one token event before completed (the client may lack the text).
      expect(resumed.events.map((e) => e.event)).toEqual(["snapshot", "token", "completed"]);
      expect(resumed.events[1]?.data).toMatchObject({ index: 0, text: "done" });
    } finally {
      await h.stop();
    }
  });

  it("answers 404 problem+json for another tenant's job and 401 without a key", async () => {
    const h = await startApi();
    try {
      const id = await submit(h);
      const other = await h.newKey("globex");
      await expectProblem(await h.call("GET", `/v1/jobs/${id}/events`, { key: other.key }), 404, "job_not_found");
      await expectProblem(await h.call("GET", `/v1/jobs/${id}/events`, { key: null }), 401);
      // A job still running streams until the client goes away; a snapshot arrives first.
      const res = await h.call("GET", `/v1/jobs/${id}/events`);
      const { events, ended } = await readEvents(res, (ev) => ev.length >= 1);
      expect(ended).toBe(false);
      expect(events[0]?.event).toBe("snapshot");
    } finally {
      await h.stop();
    }
  });
});
