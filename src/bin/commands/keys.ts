import type { Command } from "commander";
import { NotFoundError } from "../../common/errors.js";
import type { ApiKeyRecord, JobStore } from "../../coordinator/store/job-store.js";
import { UsageError } from "../exit-codes.js";

interface KeysOptions {
  config: string;
  dataDir?: string;
}

/**
 * `aitbc keys create|list|revoke`: API keys in the coordinator's store (the same data dir the
 * coordinator uses; SQLite in WAL mode lets this run while the coordinator is up). A new key is
 * printed once on stdout and only its hash is stored; `list` never shows secrets.
 */
export function registerKeysCommand(program: Command): void {
  const keys = program
    .command("keys")
    .description("create, list and revoke API keys (client keys by default, --miner for miner keys, --operator for operator keys)")
    .option("-c, --config <file>", "coordinator config file", "config/coordinator.toml")
    .option("--data-dir <dir>", "data directory (overrides [storage] data_dir)");

  keys
    .command("create")
    .description("create a key and print it once")
    .requiredOption("--name <name>", "what the key is for (shown by keys list)")
    .option("--tenant <tenant>", "the tenant whose jobs the key sees (client keys)", "default")
    .option("--miner", "a miner key (for aitbc miner) instead of a client key")
    .option("--operator", "an operator key (for /v1/admin, /dashboard and aitbc admin) instead of a client key")
    .option("--json", "print {id, key, kind, name, tenant} as JSON")
    .action(async (opts: { name: string; tenant: string; miner?: boolean; operator?: boolean; json?: boolean }, cmd: Command) => {
      if (opts.miner === true && opts.operator === true) throw new UsageError("--miner and --operator are different kinds of key: choose one", { field: "operator" });
      if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(opts.tenant)) {
        throw new UsageError("--tenant must be 1-64 letters, digits, '.', '_' or '-'", { field: "tenant" });
      }
      if (opts.name.trim() === "" || opts.name.length > 128) {
        throw new UsageError("--name must be 1-128 characters", { field: "name" });
      }
      await withStore(cmd, async (store) => {
        const kind = opts.miner === true ? "miner" : opts.operator === true ? "operator" : "client";
        const { record, key } = await store.createKey(kind, opts.name, opts.tenant, Date.now());
        if (opts.json === true) {
          process.stdout.write(`${JSON.stringify({ id: record.id, key, kind, name: record.name, tenant: record.tenant })}\n`);
        } else {
          process.stdout.write(`${key}\n`);
          process.stderr.write(`created ${kind} key ${record.id} (${record.name}, tenant ${record.tenant}); it is shown only this once\n`);
        }
      });
    });

  keys
    .command("list")
    .description("list keys (id, kind, name, tenant, created, revoked); never secrets")
    .option("--json", "print a JSON array of {id, kind, name, tenant, created_at, revoked_at}")
    .action(async (opts: { json?: boolean }, cmd: Command) => {
      await withStore(cmd, async (store) => {
        const all = await store.listKeys();
        if (opts.json === true) {
          process.stdout.write(`${JSON.stringify(all.map(keyJson), null, 2)}\n`);
          return;
        }
        const rows = all.map((k) => [k.id, k.kind, k.name, k.tenant, iso(k.createdAt), k.revokedAt === null ? "-" : iso(k.revokedAt)]);
        process.stdout.write(table(["ID", "KIND", "NAME", "TENANT", "CREATED", "REVOKED"], rows));
      });
    });

  keys
    .command("revoke")
    .description("revoke a key by its id (requests with it get 401 from then on)")
    .argument("<id>", "key id, as keys list shows it")
    .action(async (id: string, _opts: unknown, cmd: Command) => {
      await withStore(cmd, async (store) => {
        const known = (await store.listKeys()).find((k) => k.id === id);
        if (known === undefined) throw new NotFoundError("key_not_found", `no key with id ${id}`);
        const revoked = await store.revokeKey(id, Date.now());
        process.stderr.write(revoked ? `revoked key ${id}\n` : `key ${id} was already revoked\n`);
      });
    });
}

async function withStore(cmd: Command, fn: (store: JobStore) => Promise<void>): Promise<void> {
  // Options of `keys` itself (--config, --data-dir) live on the parent command.
  const parent = cmd.parent ?? cmd;
  const opts = parent.opts<KeysOptions>();
  // Loaded here, not at the top: `aitbc keys --help` and its usage errors need no store.
  const [{ loadCoordinatorConfig }, { openJobStore }] = await Promise.all([import("../../coordinator/config.js"), import("../../coordinator/store/open-store.js")]);
  const config = loadCoordinatorConfig(opts.config, {
    optional: parent.getOptionValueSource("config") !== "cli",
    overrides: { "storage.data_dir": opts.dataDir },
  });
  const store = await openJobStore(config);
  try {
    await fn(store);
  } finally {
    await store.close();
  }
}

function iso(ms: number): string {
  return new Date(ms).toISOString();
}

function keyJson(k: ApiKeyRecord): Record<string, unknown> {
  return { id: k.id, kind: k.kind, name: k.name, tenant: k.tenant, created_at: iso(k.createdAt), revoked_at: k.revokedAt === null ? null : iso(k.revokedAt) };
}

function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]?.length ?? 0)));
  const line = (cells: string[]): string => `${cells.map((c, i) => c.padEnd(widths[i] ?? 0)).join("  ").trimEnd()}\n`;
  return line(header) + rows.map(line).join("");
}
