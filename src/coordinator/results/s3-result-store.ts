import { createHash, randomBytes } from "node:crypto";
import { UnavailableError } from "../../common/errors.js";
import type { CoordinatorConfig } from "../config.js";
import type { ResultStore, SweepCounts } from "./result-store.js";
import { connectS3, type S3Connection } from "./s3-sdk.js";

/** A result object younger than this is never swept: it may be another replica's, between its put and its commit. */
export const SWEEP_MIN_AGE_MS = 10 * 60_000;

/**
 * Results in S3 (`[results] backend = "s3"`), which every replica reads: the output of attempt n
 * of a job is the object `<prefix>results/<job_id>/attempt-<n>-<random>.txt`. The random part
 * makes each copy its own object, so two replicas storing the same attempt at once (a miner that
 * resent its result through another replica) never overwrite the copy that is committed; the
 * loser's object is removed after its commit is refused. A put is acknowledged by S3 before the
 * job store commits, so a committed result always has its bytes.
 */
export class S3ResultStore implements ResultStore {
  readonly uniqueLocations = true;
  private sdk: Promise<S3Connection> | undefined;

  constructor(
    private readonly s3: CoordinatorConfig["s3"],
    private readonly bucket: string,
    private readonly prefix: string,
    private readonly now: () => number = Date.now,
  ) {}

  private connect(): Promise<S3Connection> {
    this.sdk ??= connectS3(this.s3, 3);
    return this.sdk;
  }

  private key(location: string): string {
    if (!/^results\/job_[a-z0-9]+\/attempt-\d+-[0-9a-f]+\.txt$/.test(location)) throw new Error("result location outside the result store");
    return `${this.prefix}${location}`;
  }

  async put(jobId: string, attempt: number, output: Buffer): Promise<{ location: string; sha256: string; bytes: number }> {
    if (!/^job_[a-z0-9]+$/.test(jobId)) throw new Error(`refusing a result key for job id ${jobId}`);
    const location = `results/${jobId}/attempt-${attempt}-${randomBytes(6).toString("hex")}.txt`;
    const sha256 = createHash("sha256").update(output).digest("hex");
    const { sdk, client } = await this.connect();
    try {
      await client.send(new sdk.PutObjectCommand({ Bucket: this.bucket, Key: this.key(location), Body: output, ContentType: "text/plain; charset=utf-8", Metadata: { sha256 } }));
    } catch (err) {
      throw new UnavailableError("the result store (S3) is temporarily unavailable", { retryAfterSeconds: 1, cause: err });
    }
    return { location, sha256, bytes: output.length };
  }

  async read(location: string): Promise<Buffer> {
    const { sdk, client } = await this.connect();
    try {
      const out = await client.send(new sdk.GetObjectCommand({ Bucket: this.bucket, Key: this.key(location) }));
      return Buffer.from(await out.Body!.transformToByteArray());
    } catch (err) {
      const name = (err as { name?: unknown }).name;
      if (name === "NoSuchKey" || name === "NotFound") throw err;
      throw new UnavailableError("the result store (S3) is temporarily unavailable", { retryAfterSeconds: 1, cause: err });
    }
  }

  async remove(location: string): Promise<void> {
    const { sdk, client } = await this.connect();
    await client.send(new sdk.DeleteObjectCommand({ Bucket: this.bucket, Key: this.key(location) }));
  }

  /**
   * Objects no committed result points to, older than SWEEP_MIN_AGE_MS (a younger one may be
   * another replica's result waiting for its commit). Objects of jobs the store does not know
   * are kept, as the local store keeps their files.
   */
  async sweep(committed: (jobId: string) => Promise<string | null | undefined>): Promise<SweepCounts> {
    const { sdk, client } = await this.connect();
    const counts: SweepCounts = { removed: 0, unknown: 0 };
    const cutoff = this.now() - SWEEP_MIN_AGE_MS;
    let token: string | undefined;
    const known = new Map<string, string | null | undefined>();
    do {
      const page = await client.send(new sdk.ListObjectsV2Command({ Bucket: this.bucket, Prefix: `${this.prefix}results/`, ContinuationToken: token }));
      for (const obj of page.Contents ?? []) {
        if (obj.Key === undefined || (obj.LastModified?.getTime() ?? 0) > cutoff) continue;
        const location = obj.Key.slice(this.prefix.length);
        const m = /^results\/(job_[a-z0-9]+)\/attempt-\d+-[0-9a-f]+\.txt$/.exec(location);
        if (m === null) continue;
        const jobId = m[1]!;
        if (!known.has(jobId)) known.set(jobId, await committed(jobId));
        const keep = known.get(jobId);
        if (keep === undefined) {
          counts.unknown++;
          continue;
        }
        if (keep === location) continue;
        await client.send(new sdk.DeleteObjectCommand({ Bucket: this.bucket, Key: obj.Key }));
        counts.removed++;
      }
      token = page.IsTruncated === true ? page.NextContinuationToken : undefined;
    } while (token !== undefined);
    return counts;
  }

  close(): void {
    void this.sdk?.then(({ client }) => client.destroy());
  }
}
