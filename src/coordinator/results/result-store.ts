import { createHash, randomBytes } from "node:crypto";
import { mkdir, open, readdir, readFile, rename, rm } from "node:fs/promises";
import path from "node:path";
import { UnavailableError } from "../../common/errors.js";

/**
 * Where outputs live: `<data_dir>/results/<job_id>/attempt-<n>.txt`, written to a temp file,
 * fsynced and renamed before the job store commits the result, so a committed result always
 * has its bytes on disk. A stale attempt's file is removed again. A write that fails leaves no
 * temp file behind; one that fails for want of space (or a read-only or failing disk) is an
 * UnavailableError, so the miner is asked to send the result again later.
 */
export interface ResultStore {
  /**
   * Whether every put writes a location never used before (S3: a random suffix), so no put can
   * write over a committed result: result intake then needs no read of the job before it stores
   * (the commit's compare-and-set decides alone). Local files are one name per attempt.
   */
  readonly uniqueLocations: boolean;
  put(jobId: string, attempt: number, output: Buffer): Promise<{ location: string; sha256: string; bytes: number }>;
  read(location: string): Promise<Buffer>;
  remove(location: string): Promise<void>;
  /**
   * Removes what a crash can leave behind: temp files, and result files of known jobs that no
   * committed result points to (written, then the process died before the commit).
   * `committed(jobId)` says where a job's committed result is: a location, null for a job
   * without one, undefined for a job the store does not know (its files are kept: a job store
   * restored from an older backup must not cost results).
   */
  sweep(committed: (jobId: string) => Promise<string | null | undefined>): Promise<SweepCounts>;
}

export interface SweepCounts {
  removed: number;
  /** Files of jobs the job store does not know, left in place. */
  unknown: number;
}

export class LocalResultStore implements ResultStore {
  readonly uniqueLocations = false;
  constructor(private readonly root: string) {}

  async put(jobId: string, attempt: number, output: Buffer): Promise<{ location: string; sha256: string; bytes: number }> {
    if (!/^job_[a-z0-9]+$/.test(jobId)) throw new Error(`refusing a result path for job id ${jobId}`);
    const location = path.join(jobId, `attempt-${attempt}.txt`);
    const final = path.join(this.root, location);
    const temp = `${final}.${randomBytes(6).toString("hex")}.tmp`;
    try {
      await mkdir(path.dirname(final), { recursive: true });
      const handle = await open(temp, "w", 0o640);
      try {
        await handle.writeFile(output);
        await handle.sync();
      } finally {
        await handle.close();
      }
      await rename(temp, final);
    } catch (err) {
      await rm(temp, { force: true }).catch(() => undefined);
      throw storageError(err);
    }
    return { location, sha256: createHash("sha256").update(output).digest("hex"), bytes: output.length };
  }

  read(location: string): Promise<Buffer> {
    return readFile(this.resolve(location));
  }

  async remove(location: string): Promise<void> {
    await rm(this.resolve(location), { force: true });
  }

  async sweep(committed: (jobId: string) => Promise<string | null | undefined>): Promise<SweepCounts> {
    const counts: SweepCounts = { removed: 0, unknown: 0 };
    const jobs = await readdir(this.root, { withFileTypes: true }).catch((err: unknown) => {
      if ((err as { code?: unknown }).code === "ENOENT") return [];
      throw err;
    });
    for (const dir of jobs) {
      if (!dir.isDirectory() || !/^job_[a-z0-9]+$/.test(dir.name)) continue;
      const keep = await committed(dir.name);
      for (const file of await readdir(path.join(this.root, dir.name))) {
        const location = path.join(dir.name, file);
        if (!file.endsWith(".tmp") && keep === undefined) {
          counts.unknown++;
          continue;
        }
        if (location === keep) continue;
        await rm(path.join(this.root, location), { force: true });
        counts.removed++;
      }
    }
    return counts;
  }

  private resolve(location: string): string {
    const full = path.resolve(this.root, location);
    if (!full.startsWith(path.resolve(this.root) + path.sep)) throw new Error("result location outside the result store");
    return full;
  }
}

/** File system errors that go away with their cause (space freed, the disk back): retry later. */
const UNAVAILABLE_CODES = new Set(["ENOSPC", "EDQUOT", "EROFS", "EIO", "EMFILE", "ENFILE"]);

function storageError(err: unknown): unknown {
  const code = (err as { code?: unknown }).code;
  if (typeof code === "string" && UNAVAILABLE_CODES.has(code)) {
    return new UnavailableError("the result store is temporarily unavailable", { retryAfterSeconds: 1, cause: err });
  }
  return err;
}
