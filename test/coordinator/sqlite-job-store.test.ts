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
import { IdempotencyMismatchError } from "../../src/coordinator/store/store-errors.js";
import { jobStoreContract, newJob } from "./job-store-contract.js";
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

  it("cached reads (a job's status, a key, a queue position) see this connection's writes at once and another process's from the next turn", async () => {
    const { store, file } = open();
    const other = new SqliteJobStore(file);
    closers.push(() => other.close());
    const { key, record } = await store.createKey("client", "k", "acme", 1);
    const { job: first } = await store.createJob(newJob(), 1);
    const { job } = await store.createJob(newJob(), 2);
    expect((await store.authenticate(key, "client"))?.id).toBe(record.id);
    expect((await store.getJob("acme", job.id))?.status).toBe("queued");
    expect(await store.queuePosition(job)).toBe(1);

    // This connection's own writes: seen by the very next read.
    await store.requestCancel("acme", first.id, 3);
    expect(await store.queuePosition(job)).toBe(0);
    expect((await store.getJob("acme", first.id))?.status).toBe("cancelled");

    // Another process (here another connection) revokes the key and cancels the job.
    await store.getJob("acme", job.id);
    expect(await other.revokeKey(record.id, 4)).toBe(true);
    await other.requestCancel("acme", job.id, 4);
    await new Promise((resolve) => setImmediate(resolve));
    expect(await store.authenticate(key, "client")).toBeNull();
    expect((await store.getJob("acme", job.id))?.status).toBe("cancelled");
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

  it("queue counts kept by triggers equal a count of the rows, through every way in and out of the queue, and after migration 8 on an old file", async () => {
    const { store, file } = open();
    const ids: string[] = [];
    for (const tenant of ["acme", "beta"]) for (const model of ["gpt2", "tiny-gpt2"]) for (let i = 0; i < 3; i++) ids.push((await store.createJob(newJob({ tenant, model }), 1)).job.id);
    const miner = { minerId: "m1", gpus: [], models: ["gpt2"] };
    const a = (await store.claimNextJob(miner, 2, 60_000))!;
    const b = (await store.claimNextJob(miner, 2, 60_000))!;
    await store.failAttempt({ jobId: a.job.id, attempt: a.attempt, leaseToken: a.leaseToken }, { code: "oops", message: "x", retryable: true }, 3, 0);
    await store.releaseLease({ jobId: b.job.id, attempt: b.attempt, leaseToken: b.leaseToken }, 3);
    await store.claimNextJob(miner, 4, 60_000);
    await store.requestCancel("beta", ids[9]!, 5);
    await store.expireQueued(10 ** 12, 1);
    const check = async (): Promise<void> => {
      const db = new Database(file, { readonly: true });
      try {
        const count = (where: string, ...args: string[]): number => (db.prepare(`SELECT COUNT(*) AS n FROM jobs WHERE status = 'queued'${where}`).get(...args) as { n: number }).n;
        expect(await store.countQueued({})).toBe(count(""));
        for (const tenant of ["acme", "beta", "nobody"]) {
          expect(await store.countQueued({ tenant })).toBe(count(" AND tenant = ?", tenant));
          for (const model of ["gpt2", "tiny-gpt2"]) expect(await store.countQueued({ tenant, model })).toBe(count(" AND tenant = ? AND model = ?", tenant, model));
        }
        for (const model of ["gpt2", "tiny-gpt2"]) expect(await store.countQueued({ model })).toBe(count(" AND model = ?", model));
      } finally {
        db.close();
      }
    };
    await check();
    // expireQueued with a far "now" emptied the queue; new ones count again.
    for (let i = 0; i < 4; i++) await store.createJob(newJob({ tenant: "acme", model: "tiny-gpt2" }), 10 ** 12);
    expect(await store.countQueued({ tenant: "acme" })).toBe(4);
    await check();
    // A file from before migration 8 with queued jobs in it: the migration counts them.
    await store.close();
    const raw = new Database(file);
    raw.exec("DROP TRIGGER jobs_queued_insert; DROP TRIGGER jobs_queued_enter; DROP TRIGGER jobs_queued_leave; DROP TRIGGER jobs_queued_delete; DROP TABLE queue_counts;");
    raw.prepare("DELETE FROM schema_migrations WHERE version >= 8").run();
    raw.close();
    const reopened = new SqliteJobStore(file);
    closers.push(() => reopened.close());
    expect(await reopened.countQueued({ tenant: "acme", model: "tiny-gpt2" })).toBe(4);
    expect(await reopened.countQueued({})).toBe(4);
  });

  it("submits arriving together share one commit: each is answered after it, an Idempotency-Key clash fails only its own, and all are in the file after a reopen", async () => {
    const { store, file } = open();
    const published: string[] = [];
    const submits = Array.from({ length: 20 }, (_, i) =>
      store.createJob(newJob({ input: `job ${i}`, ...(i < 2 ? { idempotency: { key: "same-key", requestHash: `hash-${i}` } } : {}) }), 1),
    );
    // Nothing is committed (nor published) before the shared commit at the next turn.
    const db = new Database(file, { readonly: true });
    closers.push(() => db.close());
    expect((db.prepare("SELECT COUNT(*) AS n FROM jobs").get() as { n: number }).n).toBe(0);
    const outcomes = await Promise.allSettled(submits);
    expect(outcomes.filter((o) => o.status === "fulfilled")).toHaveLength(19);
    const refused = outcomes[1]!;
    expect(refused.status).toBe("rejected");
    expect((refused as PromiseRejectedResult).reason).toBeInstanceOf(IdempotencyMismatchError);
    const ids = outcomes.flatMap((o) => (o.status === "fulfilled" ? [o.value.job.id] : []));
    for (const id of ids) published.push(...(await store.listEvents(id, 0)).map((e) => `${e.seq}:${e.type}`));
    expect(published).toEqual(ids.map(() => "1:queued"));
    await store.close();
    const again = new SqliteJobStore(file);
    closers.push(() => again.close());
    for (const id of ids) expect((await again.getJobById(id))?.status).toBe("queued");
    expect(await again.countQueued({})).toBe(19);
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
