import { spawn, type ChildProcess } from "node:child_process";
import { chmodSync, existsSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterEach, beforeAll, describe, expect, it } from "vitest";
import { FakeCoordinator } from "./fake-coordinator.js";

/** The built CLI (`npm test` builds first; run `npm run build` before running this file alone). */
const ROOT = path.join(import.meta.dirname, "..", "..");
const CLI = path.join(ROOT, "dist", "bin", "aitbc.js");
const FIXTURES = path.join(ROOT, "test", "fixtures", "nvidia-smi");

beforeAll(() => {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run npm run build`);
});

/** A stand-in nvidia-smi: a real program that prints a recorded output and exits with its code. */
function fakeNvidiaSmi(fixture: string, code = 0): string {
  const dir = mkdtempSync(path.join(tmpdir(), "aitbc-smi-"));
  const file = path.join(dir, "nvidia-smi");
  writeFileSync(file, `#!/bin/sh\ncat '${path.join(FIXTURES, fixture)}'\nexit ${code}\n`);
  chmodSync(file, 0o755);
  return file;
}

function run(args: string[], env: Record<string, string>): { child: ChildProcess; exit: Promise<{ code: number | null; stdout: string; stderr: string }> } {
  const child = spawn(process.execPath, [CLI, ...args], {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  const exit = new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) =>
    child.on("exit", (code) => resolve({ code, stdout, stderr })),
  );
  return { child, exit };
}

const children: ChildProcess[] = [];
const coordinators: FakeCoordinator[] = [];
afterEach(async () => {
  for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
  for (const c of coordinators.splice(0)) await c.close();
});

describe("aitbc gpus", () => {
  it("prints what nvidia-smi reports, as JSON", async () => {
    const { exit } = run(["gpus", "--json"], { AITBC_MINER_GPUS_NVIDIA_SMI: fakeNvidiaSmi("gpu-in-error.txt") });
    const { code, stdout } = await exit;
    expect(code).toBe(0);
    const d = JSON.parse(stdout) as { mode: string; gpus: { index: number; selected: boolean; healthy: boolean }[] };
    expect(d.mode).toBe("gpu");
    expect(d.gpus.map((g) => [g.index, g.selected, g.healthy])).toEqual([
      [0, true, true],
      [1, false, false],
    ]);
  });

  it("says CPU miner when the driver is not loaded", async () => {
    const { exit } = run(["gpus"], { AITBC_MINER_GPUS_NVIDIA_SMI: fakeNvidiaSmi("no-driver.txt", 9) });
    const { code, stdout } = await exit;
    expect(code).toBe(0);
    expect(stdout).toMatch(/NVIDIA-SMI has failed/);
    expect(stdout).toMatch(/mode: CPU miner/);
  });
});

describe("aitbc miner", () => {
  async function startMiner(drainGrace: string) {
    const coordinator = await FakeCoordinator.start();
    coordinators.push(coordinator);
    const m = run(["miner", "--coordinator", coordinator.url, "--cpu", "--name", "cli-rig"], {
      AITBC_MINER_COORDINATOR_KEY: coordinator.key,
      AITBC_MINER_FAKE_ENGINE_ENABLED: "true",
      AITBC_MINER_FAKE_ENGINE_TOKENS_PER_SECOND: "20",
      AITBC_MINER_MINER_DRAIN_GRACE: drainGrace,
    });
    children.push(m.child);
    const hello = await coordinator.waitForType("hello", () => true, 20_000);
    expect(hello).toMatchObject({ miner_name: "cli-rig", gpus: [], slots: 1 });
    await coordinator.waitForType("pull");
    const assign = coordinator.enqueue({
      job_id: "job_cli",
      parameters: { max_new_tokens: 4096, temperature: 0, top_k: 0, top_p: 1, repetition_penalty: 1, stop: [], seed: 1 },
    });
    await coordinator.waitForType("progress");
    return { coordinator, ...m, assign };
  }

  it("drains on SIGTERM: stops pulling, hands the running job back after the grace, exits 0", async () => {
    const { coordinator, child, exit, assign } = await startMiner("300ms");
    child.kill("SIGTERM");
    const { code, stdout } = await exit;
    expect(code).toBe(0);
    expect(coordinator.frames("pull").at(-1)!.free_slots).toBe(0);
    expect(coordinator.frames("released")).toEqual([
      { type: "released", job_id: "job_cli", attempt: 1, lease_token: assign.lease_token, reason: "shutdown" },
    ]);
    // Transitions are logged; the key never is.
    expect(stdout).toContain('"from":"ready","to":"draining"');
    expect(stdout).toContain('"to":"stopped"');
    expect(stdout).not.toContain(coordinator.key);
  });

  it("exits 1 when the engine dies, after reporting the job as retryable", async () => {
    const coordinator = await FakeCoordinator.start();
    coordinators.push(coordinator);
    const m = run(["miner", "--coordinator", coordinator.url, "--cpu"], {
      AITBC_MINER_COORDINATOR_KEY: coordinator.key,
      AITBC_MINER_FAKE_ENGINE_ENABLED: "true",
      AITBC_MINER_FAKE_ENGINE_CRASH_AFTER_TOKENS: "2",
    });
    children.push(m.child);
    await coordinator.waitForType("pull", () => true, 20_000);
    coordinator.enqueue({ job_id: "job_dies" });
    const { code, stderr } = await m.exit;
    expect(code).toBe(1);
    // After the engine's own error lines (warn and above go to stderr).
    expect(stderr).toMatch(/^aitbc: the inference engine failed/m);
    expect(coordinator.frames("fail")).toMatchObject([{ job_id: "job_dies", code: "engine_worker_failed", retryable: true }]);
  });

  it("exits at once on a second SIGTERM during the drain", async () => {
    const { coordinator, child, exit } = await startMiner("10m");
    child.kill("SIGTERM");
    await coordinator.waitForType("pull", (p) => p.free_slots === 0);
    child.kill("SIGTERM");
    const { code } = await exit;
    expect(code).toBe(143);
    expect(coordinator.frames("released")).toEqual([]);
  });
});
