import path from "node:path";
import type { CoordinatorConfig } from "../config.js";
import { LocalResultStore, type ResultStore } from "../results/result-store.js";
import { S3ResultStore } from "../results/s3-result-store.js";
import { JobEvents } from "./job-events.js";
import type { JobStore } from "./job-store.js";
import { PostgresJobStore } from "./postgres/postgres-job-store.js";
import { SqliteJobStore } from "./sqlite/sqlite-job-store.js";

/** Where the SQLite store keeps its file. */
export function databasePath(dataDir: string): string {
  return path.join(dataDir, "coordinator.db");
}

/**
 * The job store the config names: SQLite (data_dir/coordinator.db, the embedded default) or
 * PostgreSQL (storage.url, migrated on open). The coordinator and every command that opens the
 * store (`aitbc keys`, `aitbc up`) come through here.
 */
export async function openJobStore(
  config: CoordinatorConfig,
  events: JobEvents = new JobEvents(),
  replica?: string,
  wait: Parameters<typeof PostgresJobStore.open>[2] = {},
): Promise<JobStore> {
  if (config.storage.backend === "postgres") {
    return PostgresJobStore.open(
      {
        url: config.storage.url,
        schema: config.storage.schema,
        max: config.storage.poolSize,
        // A replica keeps key rows as long as a revocation may take to reach open connections.
        ...(replica === undefined ? { applicationName: "aitbc" } : { applicationName: `aitbc-coordinator ${replica}`, replica, keyCacheMs: config.limits.revocationCheckMs }),
      },
      events,
      wait,
    );
  }
  return new SqliteJobStore(databasePath(config.dataDir), events);
}

/** The result store the config names: data_dir/results, or the S3 bucket. */
export function openResultStore(config: CoordinatorConfig, now: () => number = Date.now): ResultStore {
  if (config.results.backend === "s3") return new S3ResultStore(config.s3, config.results.bucket, config.results.prefix, now);
  return new LocalResultStore(path.join(config.dataDir, "results"));
}
