/**
 * The miner protocol version; the first frame (`hello`) carries it. Every change to a frame bumps
 * it, and a coordinator accepts miners of this version and the one before
 * (OLDEST_PROTOCOL_VERSION), so a fleet can be upgraded coordinator first, miners after.
 *
 *   1  the first version
 *   2  `code` and `reason` fields (fail, released, error, cancel, welcome.refused) are restricted
 *      to letters, digits and `_ . : -`; a v1 miner's frames that use other characters are
 *      refused like any invalid frame (ours never did)
 *   3  welcome carries `replica`, the coordinator replica holding the session (several replicas
 *      share one database); a protocol 2 miner gets the welcome without it
 *   4  the generated text streams: miners send `text` frames (coalesced deltas, which also carry
 *      the progress figures, so they replace progress frames), and resend the whole text so far
 *      after a welcome that resumed the lease; the welcome says the protocol both sides speak
 *      (`protocol_version`; a miner sends text only when it is 4 or more). Protocol 3 miners
 *      got a welcome without it and kept sending progress
 *   5  hello carries `instance_id`, random per miner process start: a hello under the key and
 *      name of a live session with another instance id is refused (error `duplicate_miner`,
 *      fatal) instead of replacing it; the same instance id replaces it (a reconnect). Protocol
 *      4 miners (no instance id) replace the session as before; their welcome is unchanged.
 *      Heartbeats may carry `gpus`: each GPU's utilisation and free VRAM as the miner last read
 *      them (nvidia-smi), for the operators' fleet view; a miner sends them only to a
 *      coordinator whose welcome says 5 or more
 */
export const PROTOCOL_VERSION = 5;
/** The oldest protocol version a coordinator still accepts in a hello. */
export const OLDEST_PROTOCOL_VERSION = PROTOCOL_VERSION - 1;

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
