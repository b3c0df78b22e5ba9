import type { Requirements } from "../../protocol/jobs.js";
import type { MinerDirectory } from "../context.js";
import { minerCanRun } from "../scheduler/matching.js";
import type { JobStore, MinerRecord } from "../store/job-store.js";

/**
 * Connected miners across every replica, read from the miners table (each replica refreshes its
 * sessions' rows every heartbeat; a row not refreshed for three heartbeats is a replica gone, and
 * its miners no longer count). Read at most once a second per replica: `eligible_miners`,
 * queue estimates and /readyz count the whole fleet, not the miners this replica happens to hold.
 */
export class FleetDirectory implements MinerDirectory {
  private cache: { at: number; miners: Promise<MinerRecord[]> } | undefined;

  constructor(
    private readonly store: JobStore,
    private readonly heartbeatMs: number,
    private readonly now: () => number,
    private readonly maxAgeMs = 1_000,
  ) {}

  private miners(): Promise<MinerRecord[]> {
    const now = this.now();
    if (this.cache === undefined || now - this.cache.at > this.maxAgeMs) {
      const miners = this.store.listConnectedMiners(now - 3 * this.heartbeatMs);
      this.cache = { at: now, miners };
      // A failed read is not cached.
      miners.catch(() => {
        if (this.cache?.miners === miners) this.cache = undefined;
      });
    }
    return this.cache.miners;
  }

  async eligibleMiners(job: { model: string; requirements: Requirements }): Promise<number> {
    return (await this.miners()).filter((m) => !m.draining && !m.drained && minerCanRun(job, m)).length;
  }

  async connectedMiners(): Promise<number> {
    return (await this.miners()).length;
  }
}
