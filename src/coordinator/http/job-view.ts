import type { JobStatus } from "../../protocol/jobs.js";
import type { JobEvents } from "../store/job-events.js";
import type { JobRecord, UploadRecord } from "../store/job-store.js";

/** The job with its running attempt's latest progress, which reaches the store only at lease renewals. */
export function withLiveProgress(job: JobRecord, events: JobEvents): JobRecord {
  if (job.status !== "running") return job;
  const live = events.liveProgress(job.id);
  return live === undefined || live.attempt !== job.attempt ? job : { ...job, progress: live.progress };
}

export function iso(ms: number | null): string | null {
  return ms === null ? null : new Date(ms).toISOString();
}

function uploadView(u: UploadRecord | undefined): NonNullable<JobStatus["result"]>["upload"] {
  if (u === undefined) return { state: "pending" };
  return {
    state: u.state,
    ...(u.uri === undefined ? {} : { uri: u.uri }),
    ...(u.error === undefined ? {} : { error: u.error }),
    attempts: u.attempts,
  };
}

/** The job as GET /v1/jobs/{id} shows it (spec fields first, then ours). */
export function jobView(job: JobRecord, queued?: { eligibleMiners: number; queuePosition: number }): JobStatus {
  return {
    job_id: job.id,
    status: job.status,
    model: job.model,
    progress: Math.round(job.progress * 10) / 10,
    miner_id: job.minerId,
    created_at: new Date(job.createdAt).toISOString(),
    started_at: iso(job.startedAt),
    completed_at: iso(job.completedAt),
    result:
      job.result === null || job.status !== "completed"
        ? null
        : {
            download_url: `/v1/jobs/${job.id}/download`,
            format: job.outputFormat,
            output_sha256: job.result.sha256,
            output_bytes: job.result.bytes,
            finish_reason: job.result.finishReason,
            usage: job.result.usage,
            tokens_per_second: job.result.tokensPerSecond,
            destination: job.result.upload?.uri ?? job.destination,
            ...(job.destination.startsWith("s3://") ? { upload: uploadView(job.result.upload) } : {}),
            available: job.result.removed === undefined,
            ...(job.result.removed === undefined ? {} : { removed: { reason: job.result.removed.reason, at: new Date(job.result.removed.at).toISOString() } }),
          },
    priority: job.priority,
    attempt: job.attempt,
    cancel_requested: job.cancelRequested,
    error: job.error,
    ...(queued === undefined ? {} : { eligible_miners: queued.eligibleMiners, queue_position: queued.queuePosition }),
    parameters: { ...job.parameters },
    requirements: { ...job.requirements },
    output_config: { destination: job.destination, format: job.outputFormat },
    timeout_seconds: job.timeoutSeconds,
  };
}

export function jobSummary(job: JobRecord): {
  job_id: string;
  status: JobRecord["status"];
  model: string;
  progress: number;
  created_at: string;
  completed_at: string | null;
} {
  return {
    job_id: job.id,
    status: job.status,
    model: job.model,
    progress: Math.round(job.progress * 10) / 10,
    created_at: new Date(job.createdAt).toISOString(),
    completed_at: iso(job.completedAt),
  };
}
