import type { Requirements } from "../../protocol/jobs.js";
import type { MinerDirectory } from "../context.js";
import { minerCanRun } from "../scheduler/matching.js";
import type { JobStore, MinerRecord } from "../store/job-store.js";

/** Most active leases read for the fleet's busy slots (past it, busy is undercounted). */
const MAX_LEASES_READ = 10_000;

/**
 * Connected miners across every replica, read from the miners table (each replica refreshes its
 * sessions' rows every heartbeat; a row not refreshed for three heartbeats is a replica gone, and
 * its miners no longer count). Read at most once a second per replica: `eligible_miners`,
 * queue estimates and /readyz count the whole fleet, not the miners this replica happens to hold.
 */
export class FleetDirectory implements MinerDirectory {
  private cache: { at: number; miners: Promise<MinerRecord[]> } | undefined;
  private leases: { at: number; counts: Promise<Map<string, number>> } | undefined;

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

  connected(): Promise<readonly MinerRecord[]> {
    return this.miners();
  }

  /** Not known without reading the table (other replicas' miners come and go). */
  version(): undefined {
    return undefined;
  }

  async capacity(job: { model: string; requirements: Requirements }): Promise<{ slots: number; busy: number }> {
    const [miners, held] = await Promise.all([this.miners(), this.leaseCounts()]);
    let slots = 0;
    let busy = 0;
    for (const m of miners) {
      if (m.draining || m.drained || !minerCanRun(job, m)) continue;
      slots += m.slots;
      busy += Math.min(m.slots, held.get(m.id) ?? 0);
    }
    return { slots, busy };
  }

  /** Leases held per miner, the whole fleet's (read with the same cache age as the miners). */
  private leaseCounts(): Promise<Map<string, number>> {
    const now = this.now();
    if (this.leases === undefined || now - this.leases.at > this.maxAgeMs) {
      const counts = this.store.listActiveLeases(MAX_LEASES_READ).then((jobs) => {
        const by = new Map<string, number>();
        for (const j of jobs) if (j.minerId !== null) by.set(j.minerId, (by.get(j.minerId) ?? 0) + 1);
        return by;
      });
      this.leases = { at: now, counts };
      counts.catch(() => {
        if (this.leases?.counts === counts) this.leases = undefined;
      });
    }
    return this.leases.counts;
  }
}
