import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CLI, Cluster, ROOT, assertBuilt, type SseEvent } from "./cluster.js";

const run = promisify(execFile);

/**
 * The whole path with the real engine: a client submits over REST, the coordinator assigns the
 * job to a CPU miner running tiny-gpt2 with onnxruntime, progress flows back (SSE), the result is
 * committed, and the download is exactly what `aitbc generate` produces for the same parameters.
 */
describe("coordinator + miner (real OnnxEngine, tiny-gpt2)", () => {
  let cluster: Cluster;

  beforeAll(async () => {
    assertBuilt();
    cluster = await Cluster.start();
  });

  afterAll(async (ctx) => {
    if (ctx.tasks.some((t) => t.result?.state === "fail")) console.error(cluster.tails());
    await cluster?.close();
  });

  it("runs a job with live progress and delivers what aitbc generate produces", async () => {
    const prompt = "The quick brown fox";
    const parameters = { max_new_tokens: 300, seed: 1234, temperature: 0.9, top_k: 50, top_p: 0.9 };
    const jobId = await cluster.submit({ model: "tiny-gpt2", input: prompt, parameters });
    expect((await cluster.job(jobId)).status).toBe("queued");

    // Follow the job on its SSE stream (it ends after the terminal state). The miner starts only
    // once the stream is open, so no live progress event can pass before the test listens.
    let subscribed: () => void = () => undefined;
    const open = new Promise<void>((resolve) => (subscribed = resolve));
    const stream = cluster.events(jobId, 90_000, (e) => {
      if (e.event === "snapshot") subscribed();
    });
    await open;
    // Progress every 10 ms: tiny-gpt2 decodes fast on a CPU and there must be several updates.
    const rig = await cluster.startMiner({ name: "cpu-rig", env: { AITBC_MINER_MINER_PROGRESS_INTERVAL: "10ms" } });
    const events: SseEvent[] = await stream;
    const kinds = events.map((e) => e.event);
    expect(kinds[0]).toBe("snapshot");
    expect(kinds).toContain("running");
    expect(kinds.at(-1)).toBe("completed");
    const completedAt = kinds.lastIndexOf("completed");
    const progress = events
      .slice(0, completedAt)
      .filter((e) => e.event === "progress")
      .map((e) => e.data.progress as number);
    expect(new Set(progress).size).toBeGreaterThanOrEqual(2);
    expect(progress.every((p) => p > 0 && p < 100)).toBe(true);
    expect(progress).toEqual([...progress].sort((a, b) => a - b));

    const job = await cluster.job(jobId);
    expect(job).toMatchObject({ status: "completed", progress: 100, attempt: 1 });
    expect(job.miner_id).toBe(cluster.minerId("cpu-rig"));

    const download = await cluster.api<{ output: string; usage: { completion_tokens: number } }>("GET", `/v1/jobs/${jobId}/download`);
    expect(download.status).toBe(200);

    const { stdout } = await run(
      process.execPath,
      [
        CLI,
        "generate",
        "--model",
        "tiny-gpt2",
        "--prompt",
        prompt,
        "--max-new-tokens",
        String(parameters.max_new_tokens),
        "--seed",
        String(parameters.seed),
        "--temperature",
        String(parameters.temperature),
        "--top-k",
        String(parameters.top_k),
        "--top-p",
        String(parameters.top_p),
        // The miner runs on the CPU; a GPU rounds differently (on a host where CUDA loads).
        "--execution-provider",
        "cpu",
        "--json",
      ],
      { cwd: ROOT },
    );
    const local = JSON.parse(stdout) as { text: string };
    expect(local.text.length).toBeGreaterThan(0);
    expect(download.body.output).toBe(local.text);
    await rig.proc.kill("SIGTERM");
  });

  it("a miner running several jobs at once (sharing decode steps) delivers each as aitbc generate alone would", async () => {
    const jobs: { input: string; parameters: Record<string, number> }[] = [
      { input: "It was a bright cold day in April", parameters: { max_new_tokens: 60, seed: 5 } },
      { input: "Call me", parameters: { max_new_tokens: 90, seed: 6, temperature: 0.7, top_k: 30 } },
      { input: "In the beginning", parameters: { max_new_tokens: 45, seed: 7, temperature: 1.2, repetition_penalty: 1.3 } },
    ];
    const ids: string[] = [];
    for (const j of jobs) ids.push(await cluster.submit({ model: "tiny-gpt2", ...j }));
    await cluster.startMiner({ name: "batching-rig", env: { AITBC_MINER_MINER_MAX_CONCURRENT: "3" } });
    const done: Record<string, unknown>[] = [];
    for (const [i, id] of ids.entries()) {
      const job = await cluster.waitForJob(id, (j) => j.status === "completed", "completed", 60_000);
      done.push(job);
      expect(job.miner_id).toBe(cluster.minerId("batching-rig"));
      const download = await cluster.api<{ output: string }>("GET", `/v1/jobs/${id}/download`);
      const p = jobs[i]!.parameters;
      const flags = Object.entries({ "--max-new-tokens": p.max_new_tokens, "--seed": p.seed, "--temperature": p.temperature, "--top-k": p.top_k, "--repetition-penalty": p.repetition_penalty })
        .filter(([, v]) => v !== undefined)
        .flatMap(([k, v]) => [k, String(v)]);
      const { stdout } = await run(process.execPath, [CLI, "generate", "--model", "tiny-gpt2", "--prompt", jobs[i]!.input, ...flags, "--execution-provider", "cpu", "--json"], { cwd: ROOT });
      expect(download.body.output).toBe((JSON.parse(stdout) as { text: string }).text);
    }
    // They ran at the same time: every job started before any of them completed.
    const firstCompleted = Math.min(...done.map((j) => Date.parse(j.completed_at as string)));
    for (const j of done) expect(Date.parse(j.started_at as string)).toBeLessThanOrEqual(firstCompleted);
  });
});
