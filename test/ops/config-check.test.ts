import { execFile } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";

const run = promisify(execFile);
const CLI = path.resolve("dist/bin/aitbc.js");

async function check(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [CLI, "config", "check", ...args], { env: { ...process.env, ...env } });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

describe("aitbc config check", () => {
  it("accepts the shipped files and prints the effective config", async () => {
    for (const file of ["config/coordinator.toml", "config/miner.toml"]) {
      const r = await check([file]);
      expect(r.code).toBe(0);
      const out = JSON.parse(r.stdout) as { valid: boolean; kind: string };
      expect(out.valid).toBe(true);
      expect(out.kind).toBe(file.includes("miner") ? "miner" : "coordinator");
    }
  });

  it("masks secrets and says where an overridden key came from", async () => {
    const r = await check(["config/miner.toml"], { AITBC_MINER_COORDINATOR_KEY: "aitbc_mk_not_a_real_secret" });
    expect(r.code).toBe(0);
    expect(r.stdout).not.toContain("aitbc_mk_not_a_real_secret");
    const out = JSON.parse(r.stdout) as { config: { coordinator: { key: string } }; overridden: Record<string, string> };
    expect(out.config.coordinator.key).toBe("***");
    expect(out.overridden["coordinator.key"]).toBe("env");
  });

  it("refuses a bad file naming the key and the reason, with exit code 78", async () => {
    const dir = mkdtempSync(path.join(tmpdir(), "aitbc-config-"));
    const file = path.join(dir, "coordinator.toml");
    writeFileSync(file, '[scheduler]\nlease_ttl = "soon"\n');
    const r = await check([file]);
    expect(r.code).toBe(78);
    expect(r.stderr).toContain("scheduler.lease_ttl");
    expect(r.stderr).not.toMatch(/\n\s+at /);
  });

  it("asks for --kind when the file name does not say", async () => {
    const dir = mkdtempSync(path.join(tmpdir(), "aitbc-config-"));
    const file = path.join(dir, "settings.toml");
    writeFileSync(file, "");
    expect((await check([file])).code).not.toBe(0);
    expect((await check([file, "--kind", "coordinator"])).code).toBe(0);
  });
});
