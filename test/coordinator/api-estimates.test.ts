import { afterEach, describe, expect, it } from "vitest";
import { waitFor } from "../e2e/cluster.js";
import { startApi, type ApiHarness } from "./api-harness.js";

/** estimated_time_seconds learns from committed results (ObservedSpeeds fed by SpeedFeed). */
describe("estimates from observed results", () => {
  let h: (ApiHarness & { key: string }) | undefined;
  afterEach(async () => {
    await h?.stop();
    h = undefined;
  });

  const submit = async (model: string, maxNewTokens = 100): Promise<{ id: string; estimate: number }> => {
    const res = await h!.call("POST", "/v1/jobs", { json: { model, input: "hello", parameters: { max_new_tokens: maxNewTokens } } });
    expect(res.status).toBe(201);
    const body = (await res.json()) as { job_id: string; estimated_time_seconds: number };
    return { id: body.job_id, estimate: body.estimated_time_seconds };
  };

  /** Runs the job and commits a result of `tokens` tokens decoded at `tokensPerSecond`, through the store's verbs. */
  const commit = async (jobId: string, tokens: number, tokensPerSecond: number): Promise<void> => {
    const ref = await h!.run(jobId);
    const put = await h!.coordinator.context.results.put(jobId, ref.attempt, Buffer.from("out", "utf8"));
    const outcome = await h!.coordinator.store.commitResult(
      ref,
      { sha256: put.sha256, bytes: put.bytes, location: put.location, finishReason: "length", usage: { prompt_tokens: 1, completion_tokens: tokens }, tokensPerSecond, attempt: ref.attempt },
      Date.now(),
    );
    expect(outcome).toBe("committed");
  };

  it("moves from the config speed toward what results report", async () => {
    h = await startApi({ "estimates.default_tokens_per_second": 20, "estimates.overhead_seconds": 2 });
    // Config only: 2 s + 100 tokens / 20 tokens/s.
    const first = await submit("m-obs");
    expect(first.estimate).toBe(7);
    await commit(first.id, 100, 100);
    // The feed reads the completion in the background: the next estimate uses 100 tokens/s (≈ 1 s).
    const seen: number[] = [first.estimate];
    let last = await waitFor("an observed estimate", async () => {
      const j = await submit("m-obs");
      await commit(j.id, 100, 200);
      return j;
    }, (j) => j.estimate < 2);
    seen.push(last.estimate);
    for (let i = 0; i < 12; i++) {
      last = await submit("m-obs");
      seen.push(last.estimate);
      await commit(last.id, 100, 200);
    }
    // The feed reads completions in batches: the estimate settles once the last ones are read.
    last = await waitFor("the estimate to settle", async () => {
      const j = await submit("m-obs");
      seen.push(j.estimate);
      await commit(j.id, 100, 200);
      return j;
    }, (j) => j.estimate < 0.6);
    // Every estimate at or below the one before (toward 200 tokens/s), the last near 100 / 200 = 0.5 s.
    for (let i = 1; i < seen.length; i++) expect(seen[i]!).toBeLessThanOrEqual(seen[i - 1]! + 0.01);
    expect(last.estimate).toBeGreaterThan(0.45);
    expect(last.estimate).toBeLessThan(0.6);
    // Another model has seen nothing: config still.
    expect((await submit("m-other")).estimate).toBe(7);
    // The queue ahead is drained at the observed time per job: 3 queued before it, no miner (one slot).
    const q = await Promise.all([submit("m-obs"), submit("m-obs"), submit("m-obs")]);
    expect(q.length).toBe(3);
    const behind = await submit("m-obs");
    expect(behind.estimate).toBeGreaterThan(last.estimate);
  });

  it("keeps to config with [estimates] observe = false", async () => {
    h = await startApi({ "estimates.default_tokens_per_second": 20, "estimates.overhead_seconds": 2, "estimates.observe": false });
    for (let i = 0; i < 3; i++) {
      const j = await submit("m-obs");
      expect(j.estimate).toBe(7);
      await commit(j.id, 100, 200);
    }
    await new Promise((r) => setTimeout(r, 100));
    expect((await submit("m-obs")).estimate).toBe(7);
  });
});
