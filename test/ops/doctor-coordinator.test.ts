import { execFile } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { silentLogger } from "../../src/common/logger.js";
import { loadCoordinatorConfig } from "../../src/coordinator/config.js";
import { Coordinator } from "../../src/coordinator/coordinator.js";

const run = promisify(execFile);

interface DoctorOut {
  healthy: boolean;
  checks: { name: string; status: string; summary: string }[];
}

async function doctor(args: string[]): Promise<{ code: number; out: DoctorOut }> {
  try {
    const { stdout } = await run(process.execPath, ["dist/bin/aitbc.js", "doctor", "--json", ...args]);
    return { code: 0, out: JSON.parse(stdout) as DoctorOut };
  } catch (err) {
    const e = err as { code: number; stdout: string };
    return { code: e.code, out: JSON.parse(e.stdout) as DoctorOut };
  }
}

describe("aitbc doctor: coordinator reachable with this key", () => {
  let coordinator: Coordinator;
  let dir = "";
  beforeAll(async () => {
    dir = mkdtempSync(path.join(tmpdir(), "aitbc-doctor-"));
    const config = loadCoordinatorConfig(undefined, { optional: true, overrides: { "server.port": 0, "storage.data_dir": path.join(dir, "data") } });
    coordinator = new Coordinator({ config, log: silentLogger() });
    await coordinator.start();
  });
  afterAll(async () => {
    await coordinator.stop();
  });

  it("is ok with a valid miner key, fails with a client key or when nothing listens", async () => {
    const url = coordinator.url.replace(/^http/, "ws");
    const good = path.join(dir, "miner.key");
    writeFileSync(good, `${(await coordinator.store.createKey("miner", "host", "ops", Date.now())).key}\n`);
    const wrongKind = path.join(dir, "client.key");
    writeFileSync(wrongKind, `${(await coordinator.store.createKey("client", "c", "c", Date.now())).key}\n`);

    const ok = await doctor(["--coordinator", url, "--key-file", good]);
    expect(ok.out.checks.find((c) => c.name === "coordinator")?.status).toBe("ok");

    const refused = await doctor(["--coordinator", url, "--key-file", wrongKind]);
    const r = refused.out.checks.find((c) => c.name === "coordinator");
    expect(r?.status).toBe("fail");
    expect(r?.summary).toContain("401");
    expect(refused.code).toBe(1);

    const down = await doctor(["--coordinator", "ws://127.0.0.1:9", "--key-file", good]);
    expect(down.out.checks.find((c) => c.name === "coordinator")?.status).toBe("fail");
    expect(down.code).toBe(1);
  });
});
