import { createHash } from "node:crypto";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CLI, Cluster, ROOT, assertBuilt, waitFor, type SseEvent } from "../e2e/cluster.js";
import { streamedText } from "./stream-text.js";

const run = promisify(execFile);

/**
 * Token streaming end to end, with real processes: a coordinator, miners (the real engine on
 * tiny-gpt2, and fake-engine miners for a requeue), clients on `GET /v1/jobs/{id}/events`.
 * Whatever the path, the token events a client saw add up to the downloaded output exactly.
 */
describe("token streaming (coordinator + miners as processes)", () => {
  let cluster: Cluster;

  beforeAll(async () => {
    assertBuilt();
    cluster = await Cluster.start();
  });

  afterAll(async (ctx) => {
    if (ctx.tasks.some((t) => t.result?.state === "fail")) console.error(cluster.tails());
    await cluster?.close();
  });

  const output = async (jobId: string): Promise<string> => {
    const d = await cluster.api<{ output: string }>("GET", `/v1/jobs/${jobId}/download`);
    expect(d.status).toBe(200);
    return d.body.output;
  };

  /** Opens the job's stream and resolves once its snapshot arrived (nothing can pass before); `events` ends with the stream. */
  const follow = async (jobId: string, onEvent?: (e: SseEvent) => void): Promise<{ events: Promise<SseEvent[]> }> => {
    let opened: () => void = () => undefined;
    const open = new Promise<void>((resolve) => (opened = resolve));
    const events = cluster.events(jobId, 90_000, (e) => {
      if (e.event === "snapshot") opened();
      onEvent?.(e);
    });
    await open;
    return { events };
  };

  it("streams the real engine's text as it is generated; completed carries the result summary", { timeout: 120_000 }, async () => {
    const jobId = await cluster.submit({ model: "tiny-gpt2", input: "The quick brown fox", parameters: { max_new_tokens: 200, seed: 7, temperature: 0.9 } });
    const stream = await follow(jobId);
    const miner = await cluster.startMiner({ name: "cpu-stream" });
    const events = await stream.events;
    const completedAt = events.findIndex((e) => e.event === "completed");
    expect(completedAt).toBeGreaterThan(0);
    const before = streamedText(events.slice(0, completedAt));
    // Several pieces arrived while the job ran, before the result was committed.
    expect(before.tokens).toBeGreaterThanOrEqual(2);
    expect(before.restarts).toBe(0);
    const out = await output(jobId);
    expect(streamedText(events).text).toBe(out);
    expect(out.startsWith(before.text)).toBe(true);
    const summary = events[completedAt]!.data.result as Record<string, unknown>;
    expect(summary).toMatchObject({
      download_url: `/v1/jobs/${jobId}/download`,
      output_sha256: createHash("sha256").update(out).digest("hex"),
      finish_reason: expect.stringMatching(/^(length|eos|stop)$/) as unknown,
    });
    expect((summary.usage as { completion_tokens: number }).completion_tokens).toBeGreaterThan(0);
    await miner.proc.kill("SIGTERM");
  });

  it("restarts the text on a new attempt and says so; the tokens still add up to the output", { timeout: 90_000 }, async () => {
    // The first miner's process dies after 15 tokens; the lease expires and a second miner reruns the job.
    const dying = await cluster.startMiner({ name: "dies", fakeTokensPerSecond: 100, env: { AITBC_MINER_FAKE_ENGINE_EXIT_AFTER_TOKENS: "15" } });
    const jobId = await cluster.submit({ model: "tiny-gpt2", input: "requeue me", parameters: { max_new_tokens: 40, seed: 3 } });
    let firstAttemptText = 0;
    const stream = await follow(jobId, (e) => {
      if (e.event === "token" && e.data.attempt === 1) firstAttemptText++;
    });
    await waitFor("the first miner died", () => Promise.resolve(dying.proc.running), (r) => !r, 30_000);
    expect(firstAttemptText).toBeGreaterThan(0);
    const second = await cluster.startMiner({ name: "reruns", fakeTokensPerSecond: 100 });
    const events = await stream.events;
    const seen = streamedText(events);
    if (seen.attempts.length !== 2) console.error(JSON.stringify(events.map((e) => [e.event, e.data.attempt, e.data.index, e.data.status])));
    expect(seen.attempts).toEqual([1, 2]);
    expect(seen.restarts).toBe(1);
    const restart = events.find((e) => e.event === "text_restart");
    expect(restart?.data.attempt).toBe(2);
    expect(seen.text).toBe(await output(jobId));
    expect((await cluster.job(jobId)).attempt).toBe(2);
    await second.proc.kill("SIGTERM");
  });

  it("a client that joins while the job runs first gets the text so far in one event, then the rest", async () => {
    const miner = await cluster.startMiner({ name: "slow", fakeTokensPerSecond: 25 });
    const jobId = await cluster.submit({ model: "tiny-gpt2", input: "late joiner", parameters: { max_new_tokens: 60, seed: 11 } });
    let pieces = 0;
    let enough: () => void = () => undefined;
    const someText = new Promise<void>((resolve) => (enough = resolve));
    const early = await follow(jobId, (e) => {
      if (e.event === "token" && ++pieces === 3) enough();
    });
    await someText;
    const late = await follow(jobId);
    const [earlyEvents, lateEvents] = await Promise.all([early.events, late.events]);
    const firstToken = lateEvents.find((e) => e.event === "token");
    expect(firstToken?.data.index).toBe(0);
    expect((firstToken?.data.text as string).length).toBeGreaterThan(0);
    const out = await output(jobId);
    expect(out.startsWith(firstToken?.data.text as string)).toBe(true);
    expect(streamedText(lateEvents).text).toBe(out);
    expect(streamedText(earlyEvents).text).toBe(out);
    // And after the end, the whole text in one piece before `completed`.
    const after = await cluster.events(jobId);
    const tokens = after.filter((e) => e.event === "token");
    expect(tokens).toHaveLength(1);
    expect(tokens[0]!.data).toMatchObject({ index: 0, text: out });
    expect(after.findIndex((e) => e.event === "token")).toBeLessThan(after.findIndex((e) => e.event === "completed"));
    await miner.proc.kill("SIGTERM");
  });

  it("aitbc jobs submit --wait --stream prints the text live on stdout, progress on stderr", async () => {
    const miner = await cluster.startMiner({ name: "cli-stream", fakeTokensPerSecond: 200 });
    const conn = ["--url", cluster.baseUrl, "--key", cluster.clientKey];
    const r = await run(process.execPath, [CLI, "jobs", "submit", "--model", "tiny-gpt2", "--input", "stream to me", "--max-new-tokens", "50", "--seed", "5", "--wait", "--stream", ...conn], { cwd: ROOT });
    const jobId = /submitted (job_\w+)/.exec(r.stderr)?.[1];
    expect(jobId, r.stderr).toBeDefined();
    const out = await output(jobId!);
    expect(r.stdout).toBe(out.endsWith("\n") ? out : `${out}\n`);
    expect(r.stderr).toMatch(/completed/);
    const usage = await run(process.execPath, [CLI, "jobs", "wait", jobId!, "--stream", "--json", ...conn], { cwd: ROOT }).then(
      () => ({ code: 0, stderr: "" }),
      (e: { code: number; stderr: string }) => e,
    );
    expect(usage.code).toBe(64);
    expect(usage.stderr).toMatch(/--stream .* --json/);
    await miner.proc.kill("SIGTERM");
  });
});
