import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { silentLogger } from "../../src/common/logger.js";
import { loadCoordinatorConfig } from "../../src/coordinator/config.js";
import { Coordinator } from "../../src/coordinator/coordinator.js";

describe("coordinator /metrics", () => {
  let coordinator: Coordinator;
  let key = "";

  beforeAll(async () => {
    const dataDir = mkdtempSync(path.join(tmpdir(), "aitbc-metrics-"));
    const config = loadCoordinatorConfig(undefined, {
      optional: true,
      overrides: { "server.port": 0, "storage.data_dir": dataDir, "limits.requests_per_minute": 3 },
    });
    coordinator = new Coordinator({ config, log: silentLogger() });
    await coordinator.start();
    key = (await coordinator.store.createKey("client", "m", "m", Date.now())).key;
  });

  afterAll(async () => {
    await coordinator.stop();
  });

  function metric(text: string, name: string): number | undefined {
    const line = text.split("\n").find((l) => l.startsWith(`${name} `));
    return line === undefined ? undefined : Number(line.split(" ")[1]);
  }

  it("counts jobs by state, submits, queue depth and rate-limit refusals, without a key", async () => {
    const headers = { authorization: `Bearer ${key}`, "content-type": "application/json" };
    for (let i = 0; i < 2; i++) {
      const r = await fetch(`${coordinator.url}/v1/jobs`, { method: "POST", headers, body: JSON.stringify({ model: "tiny-gpt2", input: `hi ${i}` }) });
      expect(r.status).toBe(201);
    }
    await fetch(`${coordinator.url}/v1/jobs`, { headers });
    const limited = await fetch(`${coordinator.url}/v1/jobs`, { headers });
    expect(limited.status).toBe(429);

    const res = await fetch(`${coordinator.url}/metrics`);
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toContain("text/plain");
    const text = await res.text();
    expect(metric(text, 'aitbc_jobs{state="queued"}')).toBe(2);
    expect(metric(text, 'aitbc_jobs{state="completed"}')).toBe(0);
    expect(metric(text, "aitbc_queue_depth")).toBe(2);
    expect(metric(text, "aitbc_jobs_submitted_total")).toBe(2);
    expect(metric(text, "aitbc_rate_limited_total")).toBe(1);
    expect(metric(text, "aitbc_miners_connected")).toBe(0);
    expect(text).toContain("aitbc_time_to_assign_seconds_bucket");
  });
});
