/** The miner protocol version; the first frame (`hello`) carries it. Bump on breaking changes. */
export const PROTOCOL_VERSION = 1;

/** Job states. `assigned`: leased to a miner, not yet started. Terminal states never change. */
export const JOB_STATES = [
  "queued",
  "assigned",
  "running",
  "completed",
  "failed",
  "cancelled",
  "timed_out",
  "expired",
] as const;
export type JobState = (typeof JOB_STATES)[number];

export const TERMINAL_STATES: readonly JobState[] = ["completed", "failed", "cancelled", "timed_out", "expired"];

export function isTerminal(state: JobState): boolean {
  return TERMINAL_STATES.includes(state);
}

export const PRIORITIES = ["low", "normal", "high"] as const;
export type Priority = (typeof PRIORITIES)[number];
