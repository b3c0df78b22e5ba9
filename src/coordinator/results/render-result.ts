import type { JobRecord, StoredResult } from "../store/job-store.js";

/** The document a completed job's result is delivered as: download body and S3 object alike. */
export interface RenderedResult {
  body: string;
  contentType: string;
  /** File extension without the dot: "json" or "txt". */
  ext: "json" | "txt";
}

/**
 * Renders the stored output of a completed job per its output_config.format, so that the
 * download route and the S3 upload produce identical bytes. In the JSON document
 * `output_sha256`/`output_bytes` describe `output`'s UTF-8 bytes (the generated text), not the
 * document; the download's Digest and ETag headers describe the bytes served.
 */
export function renderResult(job: JobRecord, result: StoredResult, output: Buffer): RenderedResult {
  const text = output.toString("utf8");
  if (job.outputFormat === "text") return { body: text, contentType: "text/plain; charset=utf-8", ext: "txt" };
  return {
    body: JSON.stringify({
      job_id: job.id,
      model: job.model,
      output: text,
      finish_reason: result.finishReason,
      usage: result.usage,
      output_sha256: result.sha256,
      output_bytes: result.bytes,
      parameters: job.parameters,
      miner_id: job.minerId,
      completed_at: job.completedAt === null ? null : new Date(job.completedAt).toISOString(),
    }),
    contentType: "application/json; charset=utf-8",
    ext: "json",
  };
}
