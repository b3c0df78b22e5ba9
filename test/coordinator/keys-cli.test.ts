import { execFile } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, unlinkSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ensureLocalClientKey, ensureLocalMinerKey } from "../../src/coordinator/auth/local-key.js";
import { SqliteJobStore } from "../../src/coordinator/store/sqlite/sqlite-job-store.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const cli = path.join(root, "dist/bin/aitbc.js");

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs the built CLI in `cwd` (a temp dir, so no config/coordinator.toml is picked up) with no AITBC_* variables. */
function aitbc(cwd: string, args: string[]): Promise<Run> {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("AITBC_")));
  return new Promise((resolve) => {
    execFile(process.execPath, [cli, ...args], { cwd, env, timeout: 30_000 }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof err.code === "number" ? err.code : -1;
      resolve({ code, stdout, stderr });
    });
  });
}

describe("aitbc keys (child processes against a temp data dir)", () => {
  let dir: string;
  let dataDir: string;
  let client: { id: string; key: string };
  let miner: { id: string; key: string };

  beforeAll(async () => {
    expect(existsSync(cli), "run `npm run build` before this test").toBe(true);
    dir = mkdtempSync(path.join(os.tmpdir(), "aitbc-keys-"));
    dataDir = path.join(dir, "data");

    const c = await aitbc(dir, ["keys", "create", "--name", "alice", "--tenant", "acme", "--data-dir", dataDir]);
    expect(c.code, c.stderr).toBe(0);
    const key = c.stdout.trim();
    expect(key).toMatch(/^aitbc_ck_[a-z0-9]{12}_\S+$/);
    expect(c.stdout.split("\n").filter(Boolean)).toHaveLength(1);
    expect(c.stderr).toMatch(/only this once|will not be shown again/);
    client = { id: key.split("_")[2]!, key };

    const m = await aitbc(dir, ["keys", "create", "--name", "rig-1", "--tenant", "ops", "--miner", "--json", "--data-dir", dataDir]);
    expect(m.code, m.stderr).toBe(0);
    const body = JSON.parse(m.stdout) as { id: string; key: string; kind: string; name: string; tenant: string };
    expect(body).toMatchObject({ kind: "miner", name: "rig-1", tenant: "ops" });
    expect(body.key).toMatch(new RegExp(`^aitbc_mk_${body.id}_`));
    miner = { id: body.id, key: body.key };
  });

  afterAll(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  it("lists both keys with their fields and never a secret", async () => {
    const json = await aitbc(dir, ["keys", "list", "--json", "--data-dir", dataDir]);
    expect(json.code, json.stderr).toBe(0);
    // One JSON array, snake_case, the shape `models list --json` has too.
    const rows = JSON.parse(json.stdout) as Record<string, unknown>[];
    expect(Array.isArray(rows)).toBe(true);
    expect(rows).toHaveLength(2);
    expect(rows.find((r) => r.id === client.id)).toMatchObject({ kind: "client", name: "alice", tenant: "acme", revoked_at: null });
    expect(rows.find((r) => r.id === miner.id)).toMatchObject({ kind: "miner", name: "rig-1", tenant: "ops", revoked_at: null });

    const text = await aitbc(dir, ["keys", "list", "--data-dir", dataDir]);
    expect(text.code, text.stderr).toBe(0);
    expect(text.stdout).toMatch(/ID\s+KIND\s+NAME\s+TENANT\s+CREATED\s+REVOKED/);
    expect(text.stdout).toContain(client.id);
    expect(text.stdout).toContain(miner.id);
    for (const out of [json.stdout + json.stderr, text.stdout + text.stderr]) {
      for (const k of [client.key, miner.key]) expect(out).not.toContain(k.split("_").slice(3).join("_"));
    }
  });

  it("created keys authenticate through the store as their own kind; revoke ends that", async () => {
    const store = new SqliteJobStore(path.join(dataDir, "coordinator.db"));
    try {
      expect(await store.authenticate(client.key, "client")).toMatchObject({ id: client.id, tenant: "acme", revokedAt: null });
      expect(await store.authenticate(client.key, "miner")).toBeNull();
      expect(await store.authenticate(miner.key, "miner")).toMatchObject({ id: miner.id, tenant: "ops" });
    } finally {
      await store.close();
    }

    const r = await aitbc(dir, ["keys", "revoke", client.id, "--data-dir", dataDir]);
    expect(r.code, r.stderr).toBe(0);

    const after = new SqliteJobStore(path.join(dataDir, "coordinator.db"));
    try {
      expect(await after.authenticate(client.key, "client")).toBeNull();
      expect(await after.authenticate(miner.key, "miner")).not.toBeNull();
      expect((await after.listKeys()).find((k) => k.id === client.id)?.revokedAt).toEqual(expect.any(Number));
    } finally {
      await after.close();
    }
  });

  it("an unknown id or a missing --name exits non-zero with a one-line message", async () => {
    const bad = await aitbc(dir, ["keys", "revoke", "nosuchkey123", "--data-dir", dataDir]);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr.trim()).toMatch(/^aitbc: .*nosuchkey123/);
    expect(bad.stderr.trim().split("\n")).toHaveLength(1);
    expect(bad.stderr).not.toMatch(/\n\s+at /);

    const noName = await aitbc(dir, ["keys", "create", "--data-dir", dataDir]);
    expect(noName.code).not.toBe(0);
    expect(noName.stderr).toContain("--name");
  });
});

describe("ensureLocalClientKey", () => {
  it("creates a 0600 key file on first run, returns the same key later, and replaces a revoked or lost one", async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), "aitbc-localkey-"));
    const dataDir = path.join(dir, "data");
    const store = new SqliteJobStore(path.join(dataDir, "coordinator.db"));
    try {
      const first = await ensureLocalClientKey(store, dataDir);
      expect(first.created).toBe(true);
      const file = path.join(dataDir, "local-client.key");
      expect(statSync(file).mode & 0o777).toBe(0o600);
      expect(readFileSync(file, "utf8").trim()).toBe(first.key);
      const record = await store.authenticate(first.key, "client");
      expect(record).toMatchObject({ kind: "client", name: "local", tenant: "local" });

      expect(await ensureLocalClientKey(store, dataDir)).toEqual({ key: first.key, created: false });
      expect(await store.listKeys()).toHaveLength(1);

      // A revoked key is not handed out again.
      await store.revokeKey(record!.id, Date.now());
      const second = await ensureLocalClientKey(store, dataDir);
      expect(second.created).toBe(true);
      expect(second.key).not.toBe(first.key);
      expect(readFileSync(file, "utf8").trim()).toBe(second.key);
      expect(statSync(file).mode & 0o777).toBe(0o600);

      // Nor does a lost file leave the setup without a key.
      unlinkSync(file);
      const third = await ensureLocalClientKey(store, dataDir);
      expect(third.created).toBe(true);
      expect(await store.authenticate(third.key, "client")).not.toBeNull();

      // The miner key lives in its own file and is a miner key.
      const m = await ensureLocalMinerKey(store, dataDir);
      expect(m.created).toBe(true);
      expect(await store.authenticate(m.key, "miner")).not.toBeNull();
      expect(readFileSync(path.join(dataDir, "local-miner.key"), "utf8").trim()).toBe(m.key);
      expect(await ensureLocalClientKey(store, dataDir)).toEqual({ key: third.key, created: false });
    } finally {
      await store.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
