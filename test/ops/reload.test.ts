import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { SqliteJobStore } from "../../src/coordinator/store/sqlite/sqlite-job-store.js";

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.listen(0, "127.0.0.1", () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => resolve(port));
    });
  });
}

async function waitFor<T>(fn: () => Promise<T | undefined>, what: string, ms = 30_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn().catch(() => undefined);
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe("coordinator SIGHUP reload", () => {
  let child: ChildProcess | undefined;
  afterEach(() => {
    child?.kill("SIGKILL");
  });

  it("applies new rate limits from the file and says what it reloaded; a bad file is refused and the old config kept", async () => {
    const dir = mkdtempSync(path.join(tmpdir(), "aitbc-reload-"));
    const file = path.join(dir, "coordinator.toml");
    writeFileSync(file, "[limits]\nrequests_per_minute = 2\n");
    const store = new SqliteJobStore(path.join(dir, "data", "coordinator.db"));
    const { key } = await store.createKey("client", "r", "r", Date.now());
    await store.close();
    const port = await freePort();
    child = spawn(process.execPath, ["dist/bin/aitbc.js", "coordinator", "-c", file, "--port", String(port), "--data-dir", path.join(dir, "data")], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    let log = "";
    // Info lines on stdout, warn and above on stderr: the test reads both.
    child.stdout!.on("data", (d: Buffer) => (log += d.toString()));
    child.stderr!.on("data", (d: Buffer) => (log += d.toString()));
    const url = `http://127.0.0.1:${port}`;
    await waitFor(async () => ((await fetch(`${url}/readyz`)).ok ? true : undefined), "readyz");
    const list = (): Promise<number> => fetch(`${url}/v1/jobs`, { headers: { authorization: `Bearer ${key}` } }).then((r) => r.status);

    expect(await list()).toBe(200);
    expect(await list()).toBe(200);
    expect(await list()).toBe(429);

    writeFileSync(file, "[limits]\nrequests_per_minute = 50\n");
    child.kill("SIGHUP");
    await waitFor(async () => (log.includes('"config reloaded"') ? true : undefined), "the reload log line");
    expect(log).toMatch(/"changed":\["limits"\]/);
    expect(await list()).toBe(200);

    writeFileSync(file, "[limits]\nrequests_per_minute = \"many\"\n");
    child.kill("SIGHUP");
    await waitFor(async () => (log.includes("config reload refused") ? true : undefined), "the refusal log line");
    expect(await list()).toBe(200);
  });

  it("the miner re-reads its log level on SIGHUP", async () => {
    const dir = mkdtempSync(path.join(tmpdir(), "aitbc-reload-miner-"));
    const file = path.join(dir, "miner.toml");
    writeFileSync(file, '[log]\nlevel = "info"\n');
    const port = await freePort(); // nothing listens: the miner keeps reconnecting, which is fine here
    child = spawn(process.execPath, ["dist/bin/aitbc.js", "miner", "-c", file, "--coordinator", `ws://127.0.0.1:${port}`, "--cpu"], {
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, AITBC_MINER_COORDINATOR_KEY: "aitbc_mk_000000000000_not-a-real-key-but-well-formed0", AITBC_MINER_FAKE_ENGINE_ENABLED: "true" },
    });
    let log = "";
    child.stdout!.on("data", (d: Buffer) => (log += d.toString()));
    // "miner started" is logged after the signal handlers are installed.
    await waitFor(async () => (log.includes('"miner started"') ? true : undefined), "the miner to start");
    expect(log).not.toContain('"level":20');
    writeFileSync(file, '[log]\nlevel = "debug"\n');
    child.kill("SIGHUP");
    await waitFor(async () => (log.includes('"config reloaded"') ? true : undefined), "the reload log line");
    expect(log).toMatch(/"changed":\["log.level"\]/);
  });
});
