import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Kind, type TObject, type TSchema } from "@sinclair/typebox";
import { parse as parseToml } from "smol-toml";
import { ConfigError } from "../../src/common/errors.js";
import { CoordinatorConfigSchema, loadCoordinatorConfig } from "../../src/coordinator/config.js";

const ROOT = path.join(import.meta.dirname, "..", "..");
const SHIPPED = path.join(ROOT, "config", "coordinator.toml");
const CLI = path.join(ROOT, "dist", "bin", "aitbc.js");

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), "aitbc-coord-config-"));
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

function writeConfig(name: string, text: string): string {
  const file = path.join(dir, name);
  writeFileSync(file, text);
  return file;
}

/** [section, key, schema] for every leaf of the config schema. */
function leaves(): [string, string, TSchema][] {
  const out: [string, string, TSchema][] = [];
  for (const [section, s] of Object.entries(CoordinatorConfigSchema.properties)) {
    const obj = s as TSchema;
    if (obj[Kind] === "Object") {
      for (const [key, leaf] of Object.entries((obj as TObject).properties)) out.push([section, key, leaf]);
    } else {
      out.push([section, "", obj]);
    }
  }
  return out;
}

describe("config/coordinator.toml", () => {
  it("documents every key of the schema with its default value", () => {
    const file = parseToml(readFileSync(SHIPPED, "utf8")) as Record<string, Record<string, unknown>>;
    const missing: string[] = [];
    const differs: string[] = [];
    for (const [section, key, schema] of leaves()) {
      if (key === "") continue; // [tenants.<name>]: a table of user entries, shown as a commented example
      const value = file[section]?.[key];
      if (value === undefined) {
        missing.push(`${section}.${key}`);
        continue;
      }
      const def = (schema as { default?: unknown }).default;
      if (JSON.stringify(value) !== JSON.stringify(def)) differs.push(`${section}.${key}: file ${JSON.stringify(value)}, default ${JSON.stringify(def)}`);
    }
    expect(missing).toEqual([]);
    expect(differs).toEqual([]);
    expect(readFileSync(SHIPPED, "utf8")).toMatch(/tenants\./);
  });

  it("loads to the same config as the built-in defaults", () => {
    const fromFile = loadCoordinatorConfig(SHIPPED, { env: {} });
    const defaults = loadCoordinatorConfig(undefined, { env: {}, optional: true });
    expect({ ...fromFile, file: undefined }).toEqual({ ...defaults, file: undefined });
    expect(defaults.limits).toMatchObject({ perMinute: 60, perHour: 1000, minuteWindowMs: 60_000, hourWindowMs: 3_600_000 });
    expect(defaults.server.bodyLimit).toBe(1024 * 1024);
  });
});

describe("loadCoordinatorConfig", () => {
  function failure(text: string, env: NodeJS.ProcessEnv = {}): string {
    const file = writeConfig(`bad-${Math.random().toString(36).slice(2)}.toml`, text);
    try {
      loadCoordinatorConfig(file, { env });
    } catch (err) {
      expect(err).toBeInstanceOf(ConfigError);
      return (err as Error).message;
    }
    throw new Error("expected the config to be refused");
  }

  it("refuses a bad file naming the key and the reason", () => {
    expect(failure("[server]\nport = 70000\n")).toMatch(/server\.port: .*65535/);
    expect(failure('[server]\nport = "eighty"\n')).toMatch(/server\.port/);
    expect(failure("[limits]\nrequests_per_minute = 0\n")).toMatch(/limits\.requests_per_minute/);
    expect(failure('[scheduler]\nlease_ttl = "soon"\n')).toMatch(/scheduler\.lease_ttl/);
    expect(failure('[limits]\nmax_file_size = "lots"\n')).toMatch(/limits\.max_file_size/);
    expect(failure("[server]\nprot = 1\n")).toMatch(/server/);
    expect(failure("[nonsense]\nx = 1\n")).toMatch(/invalid config/);
    expect(failure("[server\nport = 1\n")).toMatch(/not valid TOML/);
    expect(failure('[log]\nlevel = "loud"\n')).toMatch(/log\.level/);
  });

  it("refuses a postgres store without a URL or without S3 results, and S3 results without a bucket, saying why", () => {
    expect(failure('[storage]\nbackend = "postgres"\n')).toMatch(/storage\.url: .*needs a URL/);
    expect(failure('[storage]\nbackend = "postgres"\nurl = "postgres://x@db/aitbc"\n')).toMatch(/results\.backend: .*needs results\.backend = "s3".*share no disk/);
    expect(failure('[results]\nbackend = "s3"\n')).toMatch(/results\.bucket/);
    expect(failure("", { AITBC_COORDINATOR_STORAGE_BACKEND: "postgres", AITBC_COORDINATOR_STORAGE_URL: "postgres://x@db/aitbc", AITBC_COORDINATOR_RESULTS_BACKEND: "s3" })).toMatch(/results\.bucket/);
  });

  it("reports every problem in one error, schema and durations together, with suggestions for misspelt keys", () => {
    const file = writeConfig("all.toml", '[server]\nprot = 1\nport = -1\n[scheduler]\nlease_ttl = "soon"\nheartbeat = "never"\n[limits]\nmax_file_size = "lots"\n[stroage]\nurl = ""\n');
    let caught: unknown;
    try {
      loadCoordinatorConfig(file, { env: {} });
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(ConfigError);
    const problems = (caught as ConfigError).details?.problems as { key: string; suggestion?: string }[];
    expect(problems.map((p) => p.key)).toEqual(["limits.max_file_size", "scheduler.heartbeat", "scheduler.lease_ttl", "server.port", "server.prot", "stroage"]);
    expect(problems.find((p) => p.key === "server.prot")?.suggestion).toBe("server.port");
    expect(problems.find((p) => p.key === "stroage")?.suggestion).toBe("storage");
    expect((caught as Error).message).toMatch(/invalid config \(6 problems\)/);
    // Both durations are bad: the lease/heartbeat rule is not reported on top of them.
    expect((caught as Error).message).not.toMatch(/1\.5 ×/);
  });

  it("refuses keys that contradict each other, naming both", () => {
    expect(failure('[scheduler]\nlease_ttl = "10s"\nheartbeat = "10s"\n')).toMatch(/scheduler\.lease_ttl: 10s is not longer than 1\.5 × scheduler\.heartbeat \(10s\)/);
    expect(failure('[scheduler]\nheartbeat = "20s"\n')).toMatch(/scheduler\.lease_ttl: 30s is not longer/);
    expect(failure('[server]\nheaders_timeout = "1m"\n')).toMatch(/server\.headers_timeout: .*server\.request_timeout/);
    expect(failure('[s3]\nupload_backoff = "1m"\n')).toMatch(/s3\.upload_backoff: .*upload_backoff_max/);
    expect(failure('[gateway]\nmax_buffered_result_bytes = "1MiB"\n')).toMatch(/gateway\.max_buffered_result_bytes_per_connection/);
    expect(failure("", { AITBC_COORDINATOR_SCHEDULER_LEASE_TTL: "12s" })).toMatch(/scheduler\.lease_ttl: .*\(from AITBC_COORDINATOR_SCHEDULER_LEASE_TTL\)/);
    expect(loadCoordinatorConfig(writeConfig("ok-ttl.toml", '[scheduler]\nlease_ttl = "2s"\nheartbeat = "500ms"\n'), { env: {} }).scheduler.leaseTtlMs).toBe(2000);
  });

  it("names the environment variable when an override is bad", () => {
    expect(failure("", { AITBC_COORDINATOR_SERVER_PORT: "-1" })).toMatch(/AITBC_COORDINATOR_SERVER_PORT/);
  });

  it("refuses a missing file that was named, but not a missing default one", () => {
    expect(() => loadCoordinatorConfig(path.join(dir, "nope.toml"), { env: {} })).toThrow(ConfigError);
    expect(loadCoordinatorConfig(path.join(dir, "nope.toml"), { env: {}, optional: true }).server.port).toBe(8080);
  });

  it("applies defaults < file < environment < flags, in human units", () => {
    const file = writeConfig(
      "layers.toml",
      '[server]\nport = 9000\nhost = "0.0.0.0"\n[limits]\nminute_window = "2s"\nrequests_per_hour = 5\n[tenants.acme]\ns3_buckets = ["acme-out"]\n',
    );
    const env = { AITBC_COORDINATOR_SERVER_PORT: "9100", AITBC_COORDINATOR_LIMITS_REQUESTS_PER_MINUTE: "7" };
    const c = loadCoordinatorConfig(file, { env, overrides: { "server.port": 0, "storage.data_dir": path.join(dir, "d") } });
    expect(c.server).toMatchObject({ port: 0, host: "0.0.0.0" });
    expect(c.limits).toMatchObject({ perMinute: 7, perHour: 5, minuteWindowMs: 2000 });
    expect(c.dataDir).toBe(path.join(dir, "d"));
    expect(c.tenants).toEqual({ acme: { s3Buckets: ["acme-out"] } });
    expect(c.file).toBe(file);
  });
});

describe("aitbc coordinator (child process)", () => {
  beforeAll(() => {
    if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run npm run build`);
  });

  it("exits 78 with the key and the reason for a bad config file", async () => {
    const file = writeConfig("cli-bad.toml", "[limits]\nrequests_per_hour = -3\n");
    const child = spawn(process.execPath, [CLI, "coordinator", "--config", file], { cwd: dir, stdio: ["ignore", "pipe", "pipe"] });
    let stderr = "";
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    const code = await new Promise<number | null>((resolve) => child.on("exit", resolve));
    expect(code).toBe(78);
    expect(stderr).toMatch(/limits\.requests_per_hour/);
    expect(stderr).not.toMatch(/\n\s+at /); // no stack trace
  });

  it("starts on --port 0 with --data-dir, answers, and stops on SIGTERM", async () => {
    const dataDir = path.join(dir, "cli-data");
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("AITBC_")));
    const child = spawn(process.execPath, [CLI, "coordinator", "--port", "0", "--data-dir", dataDir, "--host", "127.0.0.1"], {
      cwd: dir,
      env,
      stdio: ["ignore", "pipe", "pipe"],
    });
    const exited = new Promise<number | null>((resolve) => child.on("exit", resolve));
    const lines = createInterface({ input: child.stdout });
    const url = await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("no listening log line")), 20_000);
      lines.on("line", (line) => {
        try {
          const entry = JSON.parse(line) as { msg?: string; url?: string };
          if (entry.msg === "coordinator listening" && typeof entry.url === "string") {
            clearTimeout(timer);
            resolve(entry.url);
          }
        } catch {
          // not a JSON log line
        }
      });
    });
    const health = await fetch(`${url}/healthz`);
    expect(health.status).toBe(200);
    const unauth = await fetch(`${url}/v1/jobs`);
    expect(unauth.status).toBe(401);
    expect(existsSync(path.join(dataDir, "coordinator.db"))).toBe(true);
    child.kill("SIGTERM");
    expect(await exited).toBe(0);
  });
});
