import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Cluster, assertBuilt, waitFor } from "../e2e/cluster.js";

/**
 * POST /v1/completions, /v1/chat/completions and GET /v1/models driven by the official `openai`
 * npm client against a real coordinator and a real (fake-engine) miner process.
 */
describe("OpenAI-compatible endpoints (official openai client)", () => {
  let cluster: Cluster;
  let client: OpenAI;

  beforeAll(async () => {
    assertBuilt();
    cluster = await Cluster.start();
    await cluster.startMiner({ name: "oai-1", fakeTokensPerSecond: 200 });
    client = new OpenAI({ apiKey: cluster.clientKey, baseURL: `${cluster.baseUrl}/v1`, maxRetries: 0 });
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

  it("answers a plain completion as a text_completion whose id is the job", async () => {
    const c = await client.completions.create({ model: "tiny-gpt2", prompt: "Hello from the SDK", max_tokens: 12, seed: 1 });
    expect(c.object).toBe("text_completion");
    expect(c.model).toBe("tiny-gpt2");
    expect(c.choices).toHaveLength(1);
    expect(c.choices[0]!.finish_reason).toBe("length");
    expect(c.choices[0]!.text).toBe(await output(c.id));
    expect(c.usage?.completion_tokens).toBe(12);
    expect(c.usage?.total_tokens).toBe((c.usage?.prompt_tokens ?? 0) + 12);
    const job = await cluster.job(c.id);
    expect(job).toMatchObject({ status: "completed", model: "tiny-gpt2" });
    // OpenAI's defaults for what the body omits: top_k off, temperature 1, top_p 1.
    expect(job.parameters).toMatchObject({ max_new_tokens: 12, temperature: 1, top_p: 1, top_k: 0, seed: 1 });
  });

  it("applies OpenAI's max_tokens default of 16", async () => {
    const c = await client.completions.create({ model: "tiny-gpt2", prompt: "defaults" });
    expect(c.usage?.completion_tokens).toBe(16);
  });

  it("streams chunks whose text equals the job's downloaded output", async () => {
    const stream = await client.completions.create({ model: "tiny-gpt2", prompt: "stream it", max_tokens: 40, seed: 9, stream: true, stream_options: { include_usage: true } });
    let text = "";
    let id = "";
    let chunks = 0;
    let finish: string | null = null;
    let usage: OpenAI.CompletionUsage | undefined;
    for await (const chunk of stream) {
      id = chunk.id;
      if (chunk.usage !== undefined && chunk.usage !== null) usage = chunk.usage;
      const choice = chunk.choices[0];
      if (choice === undefined) continue;
      chunks++;
      text += choice.text;
      if (choice.finish_reason !== null) finish = choice.finish_reason;
    }
    expect(chunks).toBeGreaterThanOrEqual(2);
    expect(finish).toBe("length");
    expect(usage?.completion_tokens).toBe(40);
    expect(text).toBe(await output(id));
  });

  it("cuts the text at a stop sequence and says finish_reason stop", async () => {
    const params = { model: "tiny-gpt2", prompt: "stop somewhere", max_tokens: 40, seed: 4 };
    const full = (await client.completions.create(params)).choices[0]!.text;
    const stop = ["miner", "model", "worked", "today", "small"].find((w) => full.indexOf(w) > 0);
    expect(stop, full).toBeDefined();
    const cut = await client.completions.create({ ...params, stop: [stop!] });
    expect(cut.choices[0]!.finish_reason).toBe("stop");
    expect(cut.choices[0]!.text).toBe(full.slice(0, full.indexOf(stop!)));
  });

  it("refuses a parameter it cannot honour in OpenAI's error shape", async () => {
    const err = await client.completions.create({ model: "tiny-gpt2", prompt: "x", n: 2 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpenAI.UnprocessableEntityError);
    const e = err as InstanceType<typeof OpenAI.UnprocessableEntityError>;
    expect(e.status).toBe(422);
    expect(e.code).toBe("validation_failed");
    expect(e.message).toMatch(/n must be 1/);
    expect((e.error as { type?: string }).type).toBe("invalid_request_error");
    const logprobs = await client.completions.create({ model: "tiny-gpt2", prompt: "x", logprobs: 2 }).catch((x: unknown) => x);
    expect((logprobs as InstanceType<typeof OpenAI.APIError>).message).toMatch(/logprobs/);
    const unknown = await client.completions.create({ model: "tiny-gpt2", prompt: "x", max_tokens: 0 }).catch((x: unknown) => x);
    expect((unknown as InstanceType<typeof OpenAI.APIError>).status).toBe(422);
  });

  it("answers a bad key with 401 and chat with a 404 that says why, both as OpenAI errors", async () => {
    const bad = new OpenAI({ apiKey: "aitbc_ck_wrong", baseURL: `${cluster.baseUrl}/v1`, maxRetries: 0 });
    const e401 = await bad.models.list().catch((e: unknown) => e);
    expect(e401).toBeInstanceOf(OpenAI.AuthenticationError);
    const chat = await client.chat.completions.create({ model: "tiny-gpt2", messages: [{ role: "user", content: "hi" }] }).catch((e: unknown) => e);
    expect(chat).toBeInstanceOf(OpenAI.NotFoundError);
    expect((chat as InstanceType<typeof OpenAI.NotFoundError>).message).toMatch(/chat template/);
  });

  it("lists the models the connected fleet serves, with miners and free slots", async () => {
    const page = await client.models.list();
    const model: (OpenAI.Model & { miners?: number; slots?: number; free_slots?: number }) | undefined = page.data.find((m) => m.id === "tiny-gpt2");
    expect(model).toMatchObject({ id: "tiny-gpt2", object: "model", owned_by: "aitbc", miners: 1, slots: 1, free_slots: 1 });
  });

  it("cancels the job of a client that disconnects from its stream", async () => {
    const slow = await cluster.startMiner({ name: "oai-slow", fakeTokensPerSecond: 10, env: { AITBC_MINER_FAKE_ENGINE_MODELS: '["slow-model"]' } });
    const ac = new AbortController();
    const res = await fetch(`${cluster.baseUrl}/v1/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${cluster.clientKey}`, "content-type": "application/json" },
      body: JSON.stringify({ model: "slow-model", prompt: "go away", max_tokens: 200, stream: true }),
      signal: ac.signal,
    });
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    const first = new TextDecoder().decode((await reader.read()).value);
    const id = /"id":"(job_\w+)"/.exec(first)?.[1];
    expect(id, first).toBeDefined();
    ac.abort();
    const job = await cluster.waitForJob(id!, (j) => j.status === "cancelled", "cancelled after the disconnect");
    expect(job.status).toBe("cancelled");
    await slow.proc.kill("SIGTERM");
  });
});

describe("OpenAI-compatible endpoints under the rate limit", () => {
  let cluster: Cluster;

  beforeAll(async () => {
    assertBuilt();
    cluster = await Cluster.start({ AITBC_COORDINATOR_LIMITS_REQUESTS_PER_MINUTE: "2" });
  });

  afterAll(async () => {
    await cluster?.close();
  });

  it("answers 429 in OpenAI's shape, which the SDK surfaces as a RateLimitError", async () => {
    const client = new OpenAI({ apiKey: cluster.clientKey, baseURL: `${cluster.baseUrl}/v1`, maxRetries: 0 });
    const results = await waitFor(
      "a 429",
      async () => client.models.list().then(() => "ok", (e: unknown) => e),
      (r) => r !== "ok",
      10_000,
      0,
    );
    expect(results).toBeInstanceOf(OpenAI.RateLimitError);
    const e = results as InstanceType<typeof OpenAI.RateLimitError>;
    expect(e.status).toBe(429);
    expect(e.code).toBe("rate_limited");
    expect((e.error as { type?: string }).type).toBe("rate_limit_error");
  });
});

describe("OpenAI streams when a coordinator shuts down", () => {
  let cluster: Cluster;

  beforeAll(async () => {
    assertBuilt();
    cluster = await Cluster.start();
  });

  afterAll(async () => {
    await cluster?.close();
  });

  it("closes the stream without cancelling its job; the job completes after the restart", async () => {
    await cluster.startMiner({ name: "survivor", fakeTokensPerSecond: 20 });
    const res = await fetch(`${cluster.baseUrl}/v1/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${cluster.clientKey}`, "content-type": "application/json" },
      body: JSON.stringify({ model: "tiny-gpt2", prompt: "outlive the replica", max_tokens: 60, stream: true }),
    });
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    const first = new TextDecoder().decode((await reader.read()).value);
    const id = /"id":"(job_\w+)"/.exec(first)![1]!;
    await cluster.coordinator!.kill("SIGTERM");
    // The stream ends (without [DONE]) when the coordinator goes.
    let rest = "";
    for (;;) {
      const r: { done: boolean; value?: Uint8Array } = await reader.read().catch(() => ({ done: true }));
      if (r.done === true) break;
      rest += new TextDecoder().decode(r.value);
    }
    expect(rest).not.toContain("[DONE]");
    await cluster.startCoordinator();
    const job = await cluster.waitForJob(id, (j) => j.status === "completed" || j.status === "cancelled", "finished after the restart", 60_000);
    expect(job.status).toBe("completed");
    expect(job.cancel_requested).toBe(false);
  }, 90_000);
});

