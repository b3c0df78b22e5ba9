import { chmod, mkdir, readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import type { JobStore } from "../store/job-store.js";

/**
 * Keys for the one-machine setup (`aitbc up`): created on first start, kept in the data dir
 * (mode 0600) so later starts print the same key, and replaced if the file is gone or the key
 * was revoked.
 */
async function ensureLocalKey(
  store: JobStore,
  dataDir: string,
  kind: "client" | "miner",
): Promise<{ key: string; created: boolean }> {
  const file = path.join(dataDir, `local-${kind}.key`);
  try {
    const saved = (await readFile(file, "utf8")).trim();
    if ((await store.authenticate(saved, kind)) !== null) return { key: saved, created: false };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
  }
  const { key } = await store.createKey(kind, "local", "local", Date.now());
  await mkdir(dataDir, { recursive: true });
  await writeFile(file, `${key}\n`, { mode: 0o600 });
  await chmod(file, 0o600);
  return { key, created: true };
}

export function ensureLocalClientKey(store: JobStore, dataDir: string): Promise<{ key: string; created: boolean }> {
  return ensureLocalKey(store, dataDir, "client");
}

export function ensureLocalMinerKey(store: JobStore, dataDir: string): Promise<{ key: string; created: boolean }> {
  return ensureLocalKey(store, dataDir, "miner");
}
