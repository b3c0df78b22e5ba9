import type { WebSocket } from "ws";
import type { Logger } from "../../common/logger.js";
import {
  encodeFrame,
  type CoordinatorFrame,
  type GpuInfo,
  type ResultChunkFrame,
} from "../../protocol/frames.js";

/**
 * One connected miner, as the gateway and the scheduler see it.
 *
 * `credits` is the miner's free-slot count: set (replaced) by each `pull`, lowered by one per
 * `assign` sent. The scheduler assigns only while it is above zero, so a miner never gets more
 * jobs than it asked for.
 */
export class MinerSession {
  credits = 0;
  /** Leases this connection holds, `job_id#attempt`. */
  readonly leases = new Set<string>();
  /** result_chunk frames waiting for their `result`, by `job_id#attempt`. */
  readonly chunks = new Map<string, ResultChunkFrame[]>();
  draining = false;
  badFrames = 0;
  readonly connectedAt = Date.now();

  constructor(
    readonly minerId: string,
    readonly name: string,
    readonly gpus: GpuInfo[],
    readonly models: string[],
    readonly slots: number,
    private readonly socket: WebSocket,
    readonly log: Logger,
  ) {}

  send(frame: CoordinatorFrame): boolean {
    if (this.socket.readyState !== this.socket.OPEN) return false;
    this.socket.send(encodeFrame(frame));
    return true;
  }

  close(code: number, reason: string): void {
    this.socket.close(code, reason);
  }
}

export function leaseKey(jobId: string, attempt: number): string {
  return `${jobId}#${attempt}`;
}
