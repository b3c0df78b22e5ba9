import { createHash, randomBytes } from "node:crypto";
import { mkdir, open, readFile, rename, rm } from "node:fs/promises";
import path from "node:path";

/**
 * Where outputs live: `<data_dir>/results/<job_id>/attempt-<n>.txt`, written to a temp file,
 * fsynced and renamed before the job store commits the result, so a committed result always
 * has its bytes on disk. A stale attempt's file is removed again.
 */
export interface ResultStore {
  put(jobId: string, attempt: number, output: Buffer): Promise<{ location: string; sha256: string; bytes: number }>;
  read(location: string): Promise<Buffer>;
  remove(location: string): Promise<void>;
}

export class LocalResultStore implements ResultStore {
  constructor(private readonly root: string) {}

  async put(jobId: string, attempt: number, output: Buffer): Promise<{ location: string; sha256: string; bytes: number }> {
    if (!/^job_[a-z0-9]+$/.test(jobId)) throw new Error(`refusing a result path for job id ${jobId}`);
    const dir = path.join(this.root, jobId);
    await mkdir(dir, { recursive: true });
    const location = path.join(jobId, `attempt-${attempt}.txt`);
    const final = path.join(this.root, location);
    const temp = `${final}.${randomBytes(6).toString("hex")}.tmp`;
    const handle = await open(temp, "w", 0o640);
    try {
      await handle.writeFile(output);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(temp, final);
    return { location, sha256: createHash("sha256").update(output).digest("hex"), bytes: output.length };
  }

  read(location: string): Promise<Buffer> {
    return readFile(this.resolve(location));
  }

  async remove(location: string): Promise<void> {
    await rm(this.resolve(location), { force: true });
  }

  private resolve(location: string): string {
    const full = path.resolve(this.root, location);
    if (!full.startsWith(path.resolve(this.root) + path.sep)) throw new Error("result location outside the result store");
    return full;
  }
}
