import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import Database from "better-sqlite3";
import { afterEach, describe, expect, it } from "vitest";
import { AppError, UnavailableError } from "../../src/common/errors.js";
import { resolveGenerationParameters } from "../../src/protocol/generation.js";
import { JobEvents } from "../../src/coordinator/store/job-events.js";
import type { JobStore } from "../../src/coordinator/store/job-store.js";
import { SqliteJobStore } from "../../src/coordinator/store/sqlite/sqlite-job-store.js";
import { jobStoreContract } from "./job-store-contract.js";
import { SQLITE_MIGRATIONS as MIGRATIONS } from "../../src/coordinator/store/sqlite/migrations.js";

jobStoreContract("SqliteJobStore (file in a temp dir)", () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), "aitbc-store-"));
  const file = path.join(dir, "coordinator.db");
  const events = new JobEvents();
  let current: JobStore = new SqliteJobStore(file, events);
  return Promise.resolve({
    store: current,
    events,
    reopen: () => {
      current = new SqliteJobStore(file, events);
      return Promise.resolve(current);
    },
    cleanup: async () => {
      await current.close();
      rmSync(dir, { recursive: true, force: true });
    },
  });
});

describe("SqliteJobStore specifics", () => {
  const dirs: string[] = [];
  const closers: (() => unknown)[] = [];
  afterEach(async () => {
    for (const close of closers.splice(0).reverse()) await close();
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });

  function open(): { store: SqliteJobStore; file: string } {
    const dir = mkdtempSync(path.join(os.tmpdir(), "aitbc-store-"));
    dirs.push(dir);
    const file = path.join(dir, "nested", "coordinator.db");
    const store = new SqliteJobStore(file);
    closers.push(() => store.close());
    return { store, file };
  }

  it("creates the file's folder, uses a WAL journal and synchronous=FULL", () => {
    const { store, file } = open();
    const other = new Database(file, { readonly: true });
    closers.push(() => other.close());
    // journal_mode=WAL is stored in the file, so a second connection sees it.
    expect(other.pragma("journal_mode", { simple: true })).toBe("wal");
    // synchronous is per connection, so read it on the store's own one (0 OFF, 1 NORMAL, 2 FULL, 3 EXTRA).
    const db = (store as unknown as { db: { db: Database.Database } }).db.db;
    expect(db.pragma("synchronous", { simple: true })).toBe(2);
    expect(db.pragma("foreign_keys", { simple: true })).toBe(1);
  });

  it("applies migrations once: reopening an existing file keeps its schema version", async () => {
    const { store, file } = open();
    await store.close();
    const again = new SqliteJobStore(file);
    closers.push(() => again.close());
    await again.close();
    const db = new Database(file, { readonly: true });
    closers.push(() => db.close());
    const versions = db.prepare("SELECT version FROM schema_migrations ORDER BY version").all() as { version: number }[];
    expect(versions.map((v) => v.version)).toEqual(MIGRATIONS.map((_, i) => i + 1));
  });

  it("upgrading a version 4 file keeps its keys and lets it hold operator keys", async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), "aitbc-store-"));
    dirs.push(dir);
    const file = path.join(dir, "coordinator.db");
    // A file as the coordinator before operators left it, with a client key in it.
    const old = new Database(file);
    old.exec("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)");
    MIGRATIONS.slice(0, 4).forEach((sql, i) => {
      old.exec(sql);
      old.prepare("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)").run(i + 1, 0);
    });
    old.close();
    const db = new Database(file);
    db.prepare("INSERT INTO api_keys (id, kind, name, tenant, secret_hash, created_at) VALUES ('aaaaaaaaaaaa', 'client', 'old', 'acme', x'00', 1)").run();
    expect(() => db.prepare("INSERT INTO api_keys (id, kind, name, tenant, secret_hash, created_at) VALUES ('bbbbbbbbbbbb', 'operator', 'x', 'x', x'00', 1)").run()).toThrow(/CHECK/);
    db.close();
    const store = new SqliteJobStore(file);
    closers.push(() => store.close());
    expect((await store.listKeys()).map((k) => k.name)).toEqual(["old"]);
    const ops = await store.createKey("operator", "ops", "ops", 2);
    expect(await store.authenticate(ops.key, "operator")).toEqual(ops.record);
  });

  it("a locked database makes a write verb fail with UnavailableError (503) after the busy timeout", async () => {
    const { store, file } = open();
    const locker = new Database(file);
    closers.push(() => locker.close());
    locker.exec("BEGIN EXCLUSIVE");
    closers.push(() => locker.exec("ROLLBACK"));
    const err: unknown = await store
      .createFile("acme", "x", { sha256: "00", bytes: 1 }, 1)
      .then(() => null)
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UnavailableError);
    expect(err).toMatchObject({ code: "unavailable", status: 503, retryable: true });
    expect((err as AppError).message).not.toMatch(/SQLITE/);
    // Once the lock is gone the same verb works again.
    locker.exec("ROLLBACK");
    closers.pop();
    await expect(store.createFile("acme", "x", { sha256: "00", bytes: 1 }, 2)).resolves.toMatchObject({ tenant: "acme" });
  });

  it("a closed store refuses verbs with UnavailableError", async () => {
    const { store } = open();
    await store.close();
    await store.close(); // idempotent
    await expect(
      store.createJob(
        {
          tenant: "acme",
          model: "gpt2",
          input: "x",
          inputFileId: null,
          outputFormat: "json",
          destination: "",
          requirements: {},
          priority: "normal",
          timeoutSeconds: 60,
          parameters: resolveGenerationParameters(undefined, () => 1),
          maxAttempts: 3,
          estimatedCost: 0,
          estimatedTimeSeconds: 1,
        },
        1,
      ),
    ).rejects.toBeInstanceOf(UnavailableError);
  });
});
