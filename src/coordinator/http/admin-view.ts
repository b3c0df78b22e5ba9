import type { JobStatus } from "../../protocol/jobs.js";
import type { JobRecord, MinerRecord } from "../store/job-store.js";
import { iso, jobView } from "./job-view.js";

/** What /v1/admin shows of miners and jobs (operators see every tenant's metadata; prompts only with [admin] show_outputs). */

export interface AdminMinerView {
  miner_id: string;
  name: string;
  key_id: string;
  /** The replica holding its session (null when not connected). */
  replica: string | null;
  connected: boolean;
  connected_since: string | null;
  last_seen_at: string | null;
  gpus: { index: number; name: string; vram_total_mb: number; vram_free_mb: number; utilization_percent: number | null }[];
  models: string[];
  slots: number;
  slots_used: number;
  slots_free: number;
  /** The miner is draining itself (shutting down). */
  draining: boolean;
  /** An operator drained it: no new jobs until undrained. */
  drained: boolean;
  tokens_per_second: number | null;
  jobs_done: number;
  jobs_failed: number;
  last_error: { code: string; message: string; at: string } | null;
  current_jobs: { job_id: string; status: string; model: string; tenant: string; progress: number; attempt: number }[];
}

export function adminMinerView(m: MinerRecord, leases: readonly JobRecord[]): AdminMinerView {
  const mine = m.connected ? leases.filter((j) => j.minerId === m.id) : [];
  return {
    miner_id: m.id,
    name: m.name,
    key_id: m.keyId,
    replica: m.connected ? m.replica : null,
    connected: m.connected,
    connected_since: m.connected ? iso(m.connectedAt) : null,
    last_seen_at: iso(m.lastSeenAt),
    // Utilisation and free VRAM from the latest heartbeats (protocol 5 miners); the hello's figures otherwise.
    gpus: m.gpus.map((g) => {
      const load = m.connected ? m.gpuLoad?.find((l) => l.index === g.index) : undefined;
      return { index: g.index, name: g.name, vram_total_mb: g.vram_total_mb, vram_free_mb: load?.vram_free_mb ?? g.vram_free_mb, utilization_percent: load?.utilization_percent ?? null };
    }),
    models: m.models,
    slots: m.slots,
    slots_used: mine.length,
    slots_free: m.connected ? Math.max(0, m.slots - mine.length) : 0,
    draining: m.draining,
    drained: m.drained,
    tokens_per_second: m.tokensPerSecond === null ? null : Math.round(m.tokensPerSecond * 10) / 10,
    jobs_done: m.jobsDone,
    jobs_failed: m.jobsFailed,
    last_error: m.lastError === null ? null : { code: m.lastError.code, message: m.lastError.message, at: new Date(m.lastError.at).toISOString() },
    current_jobs: mine.map((j) => ({ job_id: j.id, status: j.status, model: j.model, tenant: j.tenant, progress: Math.round(j.progress * 10) / 10, attempt: j.attempt })),
  };
}

export type AdminJobView = JobStatus & {
  tenant: string;
  retry_of: string | null;
  failures: number;
  max_attempts: number;
  /** The prompt, only with [admin] show_outputs = true. */
  input?: string;
};

export function adminJobView(job: JobRecord, showOutputs: boolean): AdminJobView {
  return {
    ...jobView(job),
    tenant: job.tenant,
    retry_of: job.retryOf,
    failures: job.failures,
    max_attempts: job.maxAttempts,
    ...(showOutputs ? { input: job.input } : {}),
  };
}
