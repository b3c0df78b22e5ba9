import { Backoff, sleep } from "../../common/backoff.js";
import type { Logger } from "../../common/logger.js";
import type { CoordinatorConfig } from "../config.js";
import type { JobEvents } from "../store/job-events.js";
import type { JobRecord, JobStore } from "../store/job-store.js";
import { renderResult } from "./render-result.js";
import type { ResultStore } from "./result-store.js";
import { connectS3, type S3Connection } from "./s3-sdk.js";

const S3_DESTINATION = /^s3:\/\/([^/]+)(?:\/(.*))?$/;

/** Bucket and object key of a job's result: `<prefix>/<job_id>.<ext>`, empty segments dropped. */
export function objectLocation(destination: string, jobId: string, ext: string): { bucket: string; key: string } {
  const m = S3_DESTINATION.exec(destination);
  if (m === null) throw new Error("not an s3:// destination");
  // checkDestination refused "." / ".." segments and control characters at submit; empty
  // segments ("a//b/") are dropped so the key never starts with or doubles a slash.
  const prefix = (m[2] ?? "").split("/").filter((seg) => seg !== "").join("/");
  return { bucket: m[1]!, key: prefix === "" ? `${jobId}.${ext}` : `${prefix}/${jobId}.${ext}` };
}

export interface S3UploaderDeps {
  config: CoordinatorConfig["s3"];
  store: JobStore;
  results: ResultStore;
  events: JobEvents;
  log: Logger;
  now: () => number;
}

/**
 * Delivers completed results whose job asked for an `s3://bucket/prefix` destination. Triggered
 * by each `completed` event; on start it re-drives completed s3 jobs not uploaded yet (so a
 * restart loses nothing). Each upload is tried `upload_attempts` times with the shared backoff,
 * then the failure is recorded in the job's result. The local copy is never touched, so
 * download keeps working whatever S3 does. The AWS SDK is loaded by the first upload, so a
 * coordinator whose jobs never name an s3:// destination never loads it.
 */
export class S3Uploader {
  private client: Promise<S3Connection> | undefined;
  private readonly inFlight = new Map<string, Promise<void>>();
  private readonly abort = new AbortController();
  private unsubscribe: (() => void) | undefined;
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly deps: S3UploaderDeps) {}

  private connect(): Promise<S3Connection> {
    // Our own retry loop (with backoff and a recorded outcome) replaces the SDK's: one attempt.
    this.client ??= connectS3(this.deps.config, 1);
    return this.client;
  }

  /** Listens for completed jobs and re-drives the uploads a previous run did not finish. */
  async start(): Promise<void> {
    this.unsubscribe = this.deps.events.onChange((e) => {
      // A completion whose writer says its destination is not S3 needs no read of the job.
      if (e.type === "completed" && (e.destination === undefined || e.destination.startsWith("s3://"))) this.kick(e.jobId);
    });
    await this.redrive();
    // Not only at start: uploads a crashed replica left behind are claimed by a live one.
    this.timer = setInterval(() => void this.redrive(), this.deps.config.redriveMs);
    this.timer.unref();
  }

  /**
   * Claims pending uploads (a replica's claim lasts a little longer than a full round of tries,
   * so replicas re-driving at once take different jobs) and starts them. A store that cannot
   * answer now is asked again at the next round.
   */
  private async redrive(): Promise<void> {
    const { config, store, log, now } = this.deps;
    const claimMs = config.uploadAttempts * config.uploadBackoffMaxMs + 60_000;
    try {
      const pending = await store.claimPendingUploads(now(), claimMs, 1_000);
      if (pending.length > 0) log.info({ jobs: pending.length }, "re-driving pending s3 uploads");
      for (const job of pending) this.kick(job.id);
    } catch (err) {
      log.warn({ err: describe(err) }, "could not read pending s3 uploads; trying again later");
    }
  }

  /** Stops listening, abandons retries (they stay pending for the next start) and waits for uploads in flight. */
  async stop(): Promise<void> {
    clearInterval(this.timer);
    this.unsubscribe?.();
    this.abort.abort(new Error("uploader stopping"));
    await Promise.allSettled([...this.inFlight.values()]);
    const connection = await this.client?.catch(() => undefined);
    connection?.client.destroy();
  }

  /** Resolves when the uploads started so far have ended (tests). */
  async idle(): Promise<void> {
    while (this.inFlight.size > 0) await Promise.allSettled([...this.inFlight.values()]);
  }

  private kick(jobId: string): void {
    if (this.abort.signal.aborted || this.inFlight.has(jobId)) return;
    const run = (async () => {
      const job = await this.deps.store.getJobById(jobId);
      if (job?.status !== "completed" || job.result === null || !job.destination.startsWith("s3://")) return;
      if (job.result.upload?.state === "uploaded") return;
      await this.upload(job, job.result.location);
    })()
      .catch((err: unknown) => {
        if (!this.abort.signal.aborted) this.deps.log.error({ jobId, err }, "s3 upload crashed");
      })
      .finally(() => this.inFlight.delete(jobId));
    this.inFlight.set(jobId, run);
  }

  /** Uploads the job's result document, retrying; records the outcome. Returns the s3:// URI or null. */
  async upload(job: JobRecord, location: string): Promise<string | null> {
    const { config, store, results, log, now } = this.deps;
    if (job.result === null) throw new Error("job has no result");
    const doc = renderResult(job, job.result, await results.read(location));
    const { bucket, key } = objectLocation(job.destination, job.id, doc.ext);
    const uri = `s3://${bucket}/${key}`;
    const backoff = new Backoff({ baseMs: config.uploadBackoffMs, maxMs: config.uploadBackoffMaxMs });
    const { sdk, client } = await this.connect();
    let lastError = "";
    let attempts = 0;
    for (let attempt = 1; attempt <= config.uploadAttempts; attempt += 1) {
      if (attempt > 1) {
        try {
          await sleep(backoff.next(), this.abort.signal);
        } catch {
          return null; // stopping: left pending, re-driven on the next start
        }
      }
      try {
        await client.send(
          new sdk.PutObjectCommand({ Bucket: bucket, Key: key, Body: Buffer.from(doc.body, "utf8"), ContentType: doc.contentType }),
          { abortSignal: this.abort.signal },
        );
        await store.recordUpload(job.id, { uri, attempts: attempt }, now());
        log.info({ jobId: job.id, bucket, key, attempt }, "result uploaded to s3");
        return uri;
      } catch (err) {
        if (this.abort.signal.aborted) return null;
        lastError = describe(err);
        attempts = attempt;
        log.warn({ jobId: job.id, bucket, key, attempt, error: lastError }, "s3 upload failed");
        if (isPermanent(err)) break;
      }
    }
    const tries = attempts === 1 ? "1 attempt" : `${attempts} attempts`;
    await store.recordUpload(job.id, { error: { code: "s3_upload_failed", message: `upload to ${uri} failed after ${tries}: ${lastError}` }, attempts }, now());
    log.error({ jobId: job.id, bucket, key }, "s3 upload gave up; the result stays available for download");
    return null;
  }
}

/**
 * Whether trying again cannot help: the server answered with a client error (no such bucket,
 * access denied, bad credentials) other than a timeout (408) or throttling (429). Network
 * errors and 5xx answers have no such status or a 5xx one and are retried.
 */
function isPermanent(err: unknown): boolean {
  const status = (err as { $metadata?: { httpStatusCode?: unknown } } | null)?.$metadata?.httpStatusCode;
  return typeof status === "number" && status >= 400 && status < 500 && status !== 408 && status !== 429;
}

/** A short, key-free description of an SDK or network error. */
function describe(err: unknown): string {
  if (err instanceof Error) {
    const code = (err as Error & { code?: unknown }).code;
    const name = typeof code === "string" ? code : err.name;
    const msg = err.message.trim() === "" ? "" : `: ${err.message.trim().slice(0, 200)}`;
    return name === "Error" && msg !== "" ? msg.slice(2) : `${name}${msg}`;
  }
  return "unknown error";
}
