import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { aitbc, assertBuilt, claim, cleanEnv, cleanup, startCoordinator, tempDir, type Started } from "./cli-harness.js";
import { resolveGenerationParameters } from "../../src/protocol/generation.js";

/** `aitbc admin …` as child processes against a real coordinator: tables, --json, drain by name, retry, wrong keys. */
describe("aitbc admin", () => {
  let s: Started;
  let ops: string;
  let home: string;

  beforeAll(async () => {
    assertBuilt();
    s = await startCoordinator();
    ops = (await s.coordinator.store.createKey("operator", "ops", "ops", Date.now())).key;
    home = tempDir("aitbc-admin-home-");
    // A miner row as a hello leaves it (the gateway's own tests connect real miners).
    await s.coordinator.store.openMinerSession({ id: "miner_cli0000000000001", keyId: "k", name: "rig-cli", replica: s.coordinator.context.replica, instanceId: null, gpus: [], models: ["gpt2"], slots: 2 }, Date.now(), Date.now());
  });
  afterAll(cleanup);

  const admin = (args: string[], key = ops) => aitbc(["admin", ...args, "--url", s.url], { cwd: home, env: cleanEnv(home, { AITBC_KEY: key }) });

  it("lists the fleet as a table and as JSON", async () => {
    const t = await admin(["miners"]);
    expect(t.code).toBe(0);
    expect(t.stdout).toMatch(/^NAME\s+ID\s+STATE/);
    expect(t.stdout).toMatch(/rig-cli\s+miner_cli0000000000001\s+online/);
    const j = await admin(["miners", "--json"]);
    expect(JSON.parse(j.stdout)).toMatchObject([{ miner_id: "miner_cli0000000000001", name: "rig-cli", connected: true, drained: false }]);
  });

  it("drains and undrains a miner named by its name", async () => {
    const d = await admin(["drain", "rig-cli"]);
    expect(d).toMatchObject({ code: 0, stderr: "drained miner_cli0000000000001\n" });
    expect((await s.coordinator.store.getMiner("miner_cli0000000000001"))?.drained).toBe(true);
    expect((await admin(["miners"])).stdout).toMatch(/rig-cli\s+\S+\s+drained/);
    expect((await admin(["undrain", "miner_cli0000000000001"])).code).toBe(0);
    expect((await s.coordinator.store.getMiner("miner_cli0000000000001"))?.drained).toBe(false);
    const missing = await admin(["drain", "no-such-rig"]);
    expect(missing.code).toBe(64);
    expect(missing.stderr).toContain("no miner named no-such-rig");
  });

  it("lists every tenant's jobs with filters and retries a failed one", async () => {
    const store = s.coordinator.store;
    const base = {
      input: "x",
      inputFileId: null,
      outputFormat: "json" as const,
      destination: "",
      requirements: {},
      priority: "normal" as const,
      timeoutSeconds: 60,
      parameters: resolveGenerationParameters(undefined, () => 1),
      maxAttempts: 1,
      estimatedCost: 0,
      estimatedTimeSeconds: 1,
    };
    const { job: a } = await store.createJob({ ...base, tenant: "t1", model: "tiny-gpt2" }, Date.now());
    const { job: b } = await store.createJob({ ...base, tenant: "t2", model: "tiny-gpt2" }, Date.now() + 1);
    const ref = await claim(s.coordinator, a.id);
    expect(await store.failAttempt(ref, { code: "oom", message: "out of memory", retryable: false }, Date.now(), 1000)).toBe("failed");
    const list = await admin(["jobs", "--model", "tiny-gpt2"]);
    expect(list.code).toBe(0);
    expect(list.stdout).toMatch(new RegExp(`${b.id}\\s+t2\\s+tiny-gpt2\\s+queued`));
    expect(list.stdout).toMatch(new RegExp(`${a.id}\\s+t1\\s+tiny-gpt2\\s+failed`));
    expect(list.stderr).toBe("2 of 2\n");
    const failed = JSON.parse((await admin(["jobs", "--status", "failed", "--model", "tiny-gpt2", "--json"])).stdout) as { items: { job_id: string }[] };
    expect(failed.items.map((j) => j.job_id)).toEqual([a.id]);
    const r = await admin(["retry", a.id]);
    expect(r.code).toBe(0);
    const newId = r.stdout.trim();
    expect((await store.getJobById(newId))?.retryOf).toBe(a.id);
    const refused = await admin(["retry", b.id]);
    expect(refused.code).toBe(3);
    expect(refused.stderr).toContain("not_retryable, HTTP 409");
  });

  it("refuses a client key with a line naming the kind it needs", async () => {
    const r = await admin(["miners"], s.key);
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(/^aitbc: a client key cannot use the operator endpoints: use an operator key \(aitbc keys create --operator\) \(operator_key_required, HTTP 403\)\n$/);
  });
});
