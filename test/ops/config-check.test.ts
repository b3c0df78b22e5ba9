import { execFile } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";

const run = promisify(execFile);
const CLI = path.resolve("dist/bin/aitbc.js");

/** The environment without the AITBC_ variables this machine may have set. */
function cleanEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  return { ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("AITBC_"))), ...extra };
}

async function check(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [CLI, "config", "check", ...args], { env: cleanEnv(env) });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

function writeTemp(name: string, text: string): string {
  const dir = mkdtempSync(path.join(tmpdir(), "aitbc-config-"));
  const file = path.join(dir, name);
  writeFileSync(file, text);
  return file;
}

interface Problem {
  key: string;
  message: string;
  suggestion?: string;
  from?: string;
}

describe("aitbc config check", () => {
  it("accepts the shipped files, which override nothing (they restate the defaults)", async () => {
    for (const file of ["config/coordinator.toml", "config/miner.toml"]) {
      const human = await check([file]);
      expect(human.code).toBe(0);
      expect(human.stdout).toContain(`valid ${file.includes("miner") ? "miner" : "coordinator"} config`);
      expect(human.stdout).toContain("no key differs from its default");
      expect(human.stdout).toMatch(/\d+ keys set to the default value/);
      expect(() => JSON.parse(human.stdout) as unknown).toThrow(); // human output by default

      const r = await check([file, "--json"]);
      expect(r.code).toBe(0);
      const out = JSON.parse(r.stdout) as { valid: boolean; kind: string; overridden: Record<string, string>; restated: string[] };
      expect(out.valid).toBe(true);
      expect(out.kind).toBe(file.includes("miner") ? "miner" : "coordinator");
      expect(out.overridden).toEqual({});
      expect(out.restated.length).toBeGreaterThan(20);
    }
  });

  it("lists only the keys whose value differs from the default, comparing sizes and durations as values", async () => {
    const file = writeTemp("coordinator.toml", '[server]\nport = 9000\nbody_limit = 1048576\n[scheduler]\nlease_ttl = "30000ms"\nheartbeat = "5s"\n');
    const r = await check([file, "--json"]);
    expect(r.code).toBe(0);
    const out = JSON.parse(r.stdout) as { overridden: Record<string, string>; restated: string[] };
    expect(out.overridden).toEqual({ "server.port": "file", "scheduler.heartbeat": "file" });
    expect(out.restated.sort()).toEqual(["scheduler.lease_ttl", "server.body_limit"]);
    const human = await check([file]);
    expect(human.stdout).toMatch(/2 keys differ from the default:\n\s+server\.port\s+9000\s+\(file\)\n\s+scheduler\.heartbeat\s+"5s"\s+\(file\)/);
  });

  it("masks secrets and says where an overridden key came from", async () => {
    const r = await check(["config/miner.toml", "--json"], { AITBC_MINER_COORDINATOR_KEY: "aitbc_mk_not_a_real_secret" });
    expect(r.code).toBe(0);
    expect(r.stdout).not.toContain("aitbc_mk_not_a_real_secret");
    const out = JSON.parse(r.stdout) as { config: { coordinator: { key: string } }; overridden: Record<string, string> };
    expect(out.config.coordinator.key).toBe("***");
    expect(out.overridden).toEqual({ "coordinator.key": "env" });
    const human = await check(["config/miner.toml"], { AITBC_MINER_COORDINATOR_KEY: "aitbc_mk_not_a_real_secret" });
    expect(human.stdout).not.toContain("aitbc_mk_not_a_real_secret");
    expect(human.stdout).toMatch(/coordinator\.key\s+"\*\*\*"\s+\(env AITBC_MINER_COORDINATOR_KEY\)/);
    const pg = await check(["config/coordinator.toml", "--json"], { AITBC_COORDINATOR_STORAGE_URL: "postgres://aitbc:hunter2@db/aitbc", AITBC_COORDINATOR_S3_SECRET_ACCESS_KEY: "s3cr3t" });
    expect(pg.stdout).not.toContain("hunter2");
    expect(pg.stdout).not.toContain("s3cr3t");
    expect(pg.stdout).toContain("postgres://aitbc:***@db/aitbc");
  });

  it("reports every problem at once — unknown keys with a suggestion, bad values, durations, keys that contradict each other — with exit code 78", async () => {
    const file = writeTemp(
      "coordinator.toml",
      [
        "[server]",
        "prot = 8080", // misspelt
        "port = 70000", // out of range
        "[schedular]", // misspelt section
        "x = 1",
        "[scheduler]",
        'heartbeat = "soon"', // not a duration
        'max_atempts = 5', // misspelt
        "[log]",
        'level = "loud"',
        "[limits]",
        'minute_window = "2h"', // longer than the hour window
        "",
      ].join("\n"),
    );
    const r = await check([file]);
    expect(r.code).toBe(78);
    expect(r.stdout).toBe("");
    expect(r.stderr).toContain("invalid coordinator config, 7 problems");
    expect(r.stderr).toContain('server.prot: unknown key (did you mean "server.port"?)');
    expect(r.stderr).toMatch(/server\.port: .*65535, not 70000/);
    expect(r.stderr).toContain('schedular: unknown section (did you mean "scheduler"?)');
    expect(r.stderr).toMatch(/scheduler\.heartbeat: invalid duration "soon"/);
    expect(r.stderr).toContain('scheduler.max_atempts: unknown key (did you mean "scheduler.max_attempts"?)');
    expect(r.stderr).toMatch(/log\.level: expected one of "fatal", .*"silent", not "loud"/);
    expect(r.stderr).toMatch(/limits\.minute_window: the short window \(2h\) must be shorter than limits\.hour_window \(1h\)/);
    expect(r.stderr).not.toMatch(/\n\s+at /);

    const j = await check([file, "--json"]);
    expect(j.code).toBe(78);
    const out = JSON.parse(j.stdout) as { valid: boolean; kind: string; problems: Problem[] };
    expect(out.valid).toBe(false);
    expect(out.kind).toBe("coordinator");
    expect(out.problems.map((p) => p.key).sort()).toEqual(
      ["limits.minute_window", "log.level", "schedular", "scheduler.heartbeat", "scheduler.max_atempts", "server.port", "server.prot"].sort(),
    );
    expect(out.problems.find((p) => p.key === "server.prot")?.suggestion).toBe("server.port");
  });

  it("refuses a lease TTL that heartbeats cannot keep alive, and names the variable a bad value came from", async () => {
    const file = writeTemp("coordinator.toml", '[scheduler]\nlease_ttl = "5s"\n');
    const r = await check([file]);
    expect(r.code).toBe(78);
    expect(r.stderr).toMatch(/scheduler\.lease_ttl: 5s is not longer than 1\.5 × scheduler\.heartbeat \(10s\)/);
    const ok = await check([file], { AITBC_COORDINATOR_SCHEDULER_HEARTBEAT: "1s" });
    expect(ok.code).toBe(0);
    const env = await check(["config/coordinator.toml", "--json"], { AITBC_COORDINATOR_SCHEDULER_HEARTBEAT: "1m" });
    expect(env.code).toBe(78);
    const problems = (JSON.parse(env.stdout) as { problems: Problem[] }).problems;
    expect(problems).toEqual([expect.objectContaining({ key: "scheduler.lease_ttl", from: "AITBC_COORDINATOR_SCHEDULER_HEARTBEAT" })]);
    const miner = writeTemp("miner.toml", '[coordinator]\nreconnect_min = "1m"\nreconect_max = "30s"\n');
    const m = await check([miner]);
    expect(m.code).toBe(78);
    expect(m.stderr).toContain('coordinator.reconect_max: unknown key (did you mean "coordinator.reconnect_max"?)');
    expect(m.stderr).toMatch(/coordinator\.reconnect_min: the first reconnect delay \(1m\) is longer than coordinator\.reconnect_max \(30s\)/);
  });

  it("exits 78 for a file that does not exist or is not TOML, whatever its name", async () => {
    const dir = mkdtempSync(path.join(tmpdir(), "aitbc-config-"));
    for (const name of ["nope.toml", "coordinator.toml", "miner.toml"]) {
      const r = await check([path.join(dir, name)]);
      expect(r.code, name).toBe(78);
      expect(r.stderr).toMatch(/cannot read config file .*ENOENT/);
      const j = await check([path.join(dir, name), "--json"]);
      expect(j.code).toBe(78);
      expect((JSON.parse(j.stdout) as { valid: boolean }).valid).toBe(false);
    }
    const bad = writeTemp("coordinator.toml", "[server\nport = 1\n");
    const r = await check([bad]);
    expect(r.code).toBe(78);
    expect(r.stderr).toContain("not valid TOML");
  });

  it("tells the kind from the sections when the file name does not say, else asks for --kind", async () => {
    expect((await check([writeTemp("settings.toml", "[scheduler]\nmax_attempts = 2\n")])).stdout).toContain("valid coordinator config");
    expect((await check([writeTemp("settings.toml", "[gpus]\nmode = \"cpu\"\n")])).stdout).toContain("valid miner config");
    const empty = writeTemp("settings.toml", "");
    const r = await check([empty]);
    expect(r.code).toBe(78);
    expect(r.stderr).toContain("pass --kind coordinator|miner");
    expect((await check([empty, "--kind", "coordinator"])).code).toBe(0);
    expect((await check([empty, "--kind", "printer"])).code).toBe(78);
  });
});
