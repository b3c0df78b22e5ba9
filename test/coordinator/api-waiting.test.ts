import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { WelcomeFrame } from "../../src/protocol/frames.js";
import { waitFor } from "../e2e/cluster.js";
import { RawMiner, helloFrame } from "../e2e/raw-miner.js";
import { startApi, type ApiHarness } from "./api-harness.js";

/**
 * A job no connected miner can run is accepted (a miner may join) and says why: the submit answer
 * and the status carry `waiting_reason`, which follows the fleet as miners come and go.
 */
let api: ApiHarness & { key: string };
let minerKey = "";
const open: RawMiner[] = [];

beforeAll(async () => {
  api = await startApi({ "limits.requests_per_minute": 10_000 });
  minerKey = (await api.newKey("default", "miner")).key;
});

afterAll(async () => {
  for (const m of open) m.close();
  await api.stop();
});

const wsUrl = (): string => `${api.url.replace(/^http/, "ws")}/v1/miners/connect`;

async function connect(name: string, models: string[], gpuNames: string[]): Promise<RawMiner> {
  const m = await RawMiner.open(wsUrl(), minerKey);
  const gpus = gpuNames.map((n, i) => ({ index: i, name: n, vram_total_mb: 141_000, vram_free_mb: 140_000 }));
  m.send({ ...helloFrame(name), models, gpus, slots: 1, free_slots: 0 });
  await m.next<WelcomeFrame>((f) => f.type === "welcome");
  open.push(m);
  return m;
}

async function submit(body: Record<string, unknown>): Promise<{ status: number; json: Record<string, unknown> }> {
  const res = await api.call("POST", "/v1/jobs", { json: { input: "why do I wait", ...body } });
  return { status: res.status, json: (await res.json()) as Record<string, unknown> };
}

async function status(id: string): Promise<Record<string, unknown>> {
  return (await (await api.call("GET", `/v1/jobs/${id}`)).json()) as Record<string, unknown>;
}

describe("waiting_reason", () => {
  it("says no miner is connected, then names an unknown model and what is served", async () => {
    const first = await submit({ model: "gpt2" });
    expect(first.status).toBe(201);
    expect(first.json.waiting_reason).toBe("no miner is connected");
    await connect("h200-rig", ["tiny-gpt2"], ["NVIDIA H200", "NVIDIA H200"]);
    const s = await waitFor("reason with the miner", () => status(first.json.job_id as string), (j) => j.waiting_reason !== "no miner is connected");
    expect(s).toMatchObject({ status: "queued", eligible_miners: 0, waiting_reason: "model gpt2 is unknown: no miner has advertised it (served: tiny-gpt2)" });
  });

  it("a model some miner advertised before is no longer unknown; requirements name the connected GPUs", async () => {
    const gpt2 = await connect("gpt2-rig", ["gpt2"], []);
    const queued = await submit({ model: "gpt2", requirements: { gpu_type: "v100" } });
    expect(queued.json.waiting_reason).toBe("no connected miner serving gpt2 has a GPU matching v100 (connected: none)");
    gpt2.close();
    const s = await waitFor("gpt2 rig gone", () => status(queued.json.job_id as string), (j) => typeof j.waiting_reason === "string" && j.waiting_reason.startsWith("no connected miner serves"));
    expect(s.waiting_reason).toBe("no connected miner serves model gpt2 (served: tiny-gpt2)");
    const tiny = await submit({ model: "tiny-gpt2", requirements: { gpu_type: "v100" } });
    expect(tiny.json.waiting_reason).toBe("no connected miner serving tiny-gpt2 has a GPU matching v100 (connected: NVIDIA H200 ×2)");
    const vram = await submit({ model: "tiny-gpt2", requirements: { min_vram_gb: 200 } });
    expect(vram.json.waiting_reason).toMatch(/^no connected miner serving tiny-gpt2 has a GPU with 200 GB of VRAM \(most: 141\.0 GB/);
    // A job some miner can run carries none.
    const fine = await submit({ model: "tiny-gpt2" });
    expect(fine.json.waiting_reason).toBeUndefined();
    expect((await status(fine.json.job_id as string)).waiting_reason).toBeUndefined();
  });

  it("GPU names from miners are bounded and escaped", async () => {
    await connect("evil-rig", ["evil-model"], [`\u001b[2J\u001b[31mEVIL${"x".repeat(200)}`]);
    const r = await submit({ model: "evil-model", requirements: { gpu_type: "h100" } });
    const reason = r.json.waiting_reason as string;
    expect(reason).toMatch(/^no connected miner serving evil-model has a GPU matching h100 \(connected: \?\[2J\?\[31mEVILx+…\)$/);
     
    expect(reason).not.toMatch(/[\u0000-\u001f]/);
    expect(reason.length).toBeLessThan(200);
  });
});

describe("[scheduler] reject_unservable", () => {
  it("answers 422 with the reason instead of queueing", async () => {
    const strict = await startApi({ "scheduler.reject_unservable": true });
    try {
      const res = await strict.call("POST", "/v1/jobs", { json: { model: "gpt2", input: "x" } });
      expect(res.status).toBe(422);
      const p = (await res.json()) as Record<string, unknown>;
      expect(p).toMatchObject({ code: "unservable", waiting_reason: "no miner is connected" });
      expect(p.detail).toMatch(/reject_unservable/);
    } finally {
      await strict.stop();
    }
  });
});
