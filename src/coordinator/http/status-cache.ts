import type { ProgressEvent } from "../store/job-events.js";

/** Answers kept, at most (past it the cache starts again empty). */
const MAX_ENTRIES = 4096;

/** What an answer of GET /v1/jobs/{id} was written from, read before it was. */
export interface StatusInputs {
  /** The store's read version (undefined: it cannot tell, nothing is kept). */
  store: number | undefined;
  /** The miner directory's version (eligible_miners, waiting_reason; undefined: nothing is kept). */
  fleet: number | undefined;
  /** The job's live progress (a new object for each progress frame). */
  live: ProgressEvent | undefined;
}

/**
 * GET /v1/jobs/{id} answers kept as written (the JSON text), the most polled read: an answer is
 * the job's record, its queue position, the fleet's eligible miners and waiting reason and the
 * running attempt's live progress, so it stays right while the store's read version, the miner
 * directory's version and the job's live progress are those it was written at. Every entry
 * shares one (store, fleet) pair: a change of either drops them all. Keyed by tenant and job id,
 * so one tenant never reads another's answer.
 */
export class StatusCache {
  private readonly entries = new Map<string, { body: string; live: ProgressEvent | undefined }>();
  private store: number | undefined;
  private fleet: number | undefined;

  /** The answer written from these inputs, if kept. */
  get(tenant: string, jobId: string, at: StatusInputs): string | undefined {
    if (!this.current(at)) return undefined;
    const e = this.entries.get(`${tenant}\u0000${jobId}`);
    return e !== undefined && e.live === at.live ? e.body : undefined;
  }

  /** Keeps an answer written from `at` (read before writing it), unless the inputs have moved on since. */
  set(tenant: string, jobId: string, at: StatusInputs, body: string): void {
    if (!this.current(at)) return;
    if (this.entries.size >= MAX_ENTRIES) this.entries.clear();
    this.entries.set(`${tenant}\u0000${jobId}`, { body, live: at.live });
  }

  /** Whether `at` is the pair the entries hold (moving them to it when newer); never when either cannot tell. */
  private current(at: StatusInputs): boolean {
    if (at.store === undefined || at.fleet === undefined) return false;
    if (at.store === this.store && at.fleet === this.fleet) return true;
    // Versions only grow: inputs older than the entries' are an answer written across a change.
    if (this.store !== undefined && this.fleet !== undefined && (at.store < this.store || at.fleet < this.fleet)) return false;
    this.entries.clear();
    this.store = at.store;
    this.fleet = at.fleet;
    return true;
  }
}
