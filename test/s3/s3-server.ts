import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import os from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

interface S3rverInstance {
  run(): Promise<{ address: string; port: number }>;
  close(): Promise<void>;
}
type S3rverCtor = new (opts: Record<string, unknown>) => S3rverInstance;
// s3rver ships no types; only its constructor, run() and close() are used.
const S3rver = createRequire(import.meta.url)("s3rver") as S3rverCtor;

/** A real S3-compatible server (s3rver) on a free port, over a temp directory, with these buckets. */
export async function startS3(buckets: string[]): Promise<{ endpoint: string; dir: string; close: () => Promise<void> }> {
  const dir = mkdtempSync(path.join(os.tmpdir(), "aitbc-s3rver-"));
  const server = new S3rver({ port: 0, address: "127.0.0.1", silent: true, directory: dir, configureBuckets: buckets.map((name) => ({ name })) });
  const { port } = await server.run();
  return {
    endpoint: `http://127.0.0.1:${port}`,
    dir,
    close: async () => {
      await server.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** The same server in a child process (s3-server-child.ts), so its CPU counts apart from the caller's; `pid` is the child's. */
export async function startS3Child(buckets: string[]): Promise<{ endpoint: string; pid: number; close: () => Promise<void> }> {
  const script = path.join(path.dirname(fileURLToPath(import.meta.url)), "s3-server-child.ts");
  const child = spawn(process.execPath, ["--import", "tsx", script, ...buckets], { stdio: ["ignore", "pipe", "inherit"] });
  const endpoint = await new Promise<string>((resolve, reject) => {
    createInterface({ input: child.stdout }).once("line", (l) => (l.startsWith("endpoint ") ? resolve(l.slice("endpoint ".length)) : reject(new Error(`s3-server-child said ${l}`))));
    child.once("exit", (code) => reject(new Error(`s3-server-child exited with ${code}`)));
  });
  return {
    endpoint,
    pid: child.pid!,
    close: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((resolve) => child.once("exit", resolve));
      child.kill("SIGTERM");
      await exited;
    },
  };
}

/** The coordinator's [s3] settings for that server. */
export function s3Settings(endpoint: string): Record<string, unknown> {
  return { "s3.endpoint": endpoint, "s3.access_key_id": "S3RVER", "s3.secret_access_key": "S3RVER", "s3.force_path_style": true };
}

/** A replica's config on a PostgreSQL schema with results in that server's bucket (startApi overrides). */
export function replicaSettings(pgUrl: string, schema: string, endpoint: string, bucket: string): Record<string, unknown> {
  return {
    "storage.backend": "postgres",
    "storage.url": pgUrl,
    "storage.schema": schema,
    "results.backend": "s3",
    "results.bucket": bucket,
    ...s3Settings(endpoint),
  };
}
