import type { Logger } from "../common/logger.js";
import type { Requirements } from "../protocol/jobs.js";
import type { RateLimiter } from "./auth/rate-limiter.js";
import type { CoordinatorConfig } from "./config.js";
import type { ResultStore } from "./results/result-store.js";
import type { JobEvents } from "./store/job-events.js";
import type { JobStore, MinerRecord } from "./store/job-store.js";
import type { CoordinatorMetrics } from "./metrics.js";
import type { ObservedSpeeds } from "./observed-speeds.js";
import type { StreamRegistry } from "./http/stream-registry.js";

/** Connected miners, as the client API needs to see them ("how many could run this job"): this replica's, or the whole fleet's. */
export interface MinerDirectory {
  eligibleMiners(job: { model: string; requirements: Requirements }): Promise<number>;
  connectedMiners(): Promise<number>;
  /** What a waiting reason needs of each connected miner. */
  connected(): Promise<readonly Pick<MinerRecord, "models" | "gpus" | "draining">[]>;
  /** Slots of the miners that could run the job (not draining or drained), and how many of them hold a lease. */
  capacity(job: { model: string; requirements: Requirements }): Promise<{ slots: number; busy: number }>;
  /**
   * A number that changes whenever eligibleMiners, connected or the advertised models may answer
   * differently, for a caller that keeps copies of answers; undefined when it cannot tell.
   */
  version(): number | undefined;
}

/** An empty directory: no miner connected (the coordinator before its gateway starts). */
export const NO_MINERS: MinerDirectory = {
  eligibleMiners: () => Promise.resolve(0),
  connectedMiners: () => Promise.resolve(0),
  connected: () => Promise.resolve([]),
  capacity: () => Promise.resolve({ slots: 0, busy: 0 }),
  version: () => undefined,
};

/** What operator actions need of this replica's gateway. */
export interface OperatorGateway {
  setDrained(minerId: string, drained: boolean): void;
  /** False when the miner's session is not on this replica. */
  disconnect(minerId: string): Promise<boolean>;
}

/** Tells the replica holding a miner's session to act on it. */
export interface FleetControl {
  /** Asks every replica to close this miner's session (the one holding it does). */
  disconnectElsewhere(minerId: string): Promise<void>;
}

export const NO_REPLICAS: FleetControl = { disconnectElsewhere: () => Promise.resolve() };

/** What the HTTP routes, the gateway and the scheduler share. */
export interface CoordinatorContext {
  config: CoordinatorConfig;
  store: JobStore;
  results: ResultStore;
  events: JobEvents;
  miners: MinerDirectory;
  limiter: RateLimiter;
  /** Operator keys' own rate limits ([admin] requests_per_minute/hour). */
  adminLimiter: RateLimiter;
  /** Operator actions on a miner held by another replica (none with one coordinator). */
  fleetControl: FleetControl;
  /** This replica's miner sessions, for operator actions (set once the gateway exists). */
  gateway?: OperatorGateway;
  /** Open event streams, by key (limits, revocation). */
  streams: StreamRegistry;
  metrics: CoordinatorMetrics;
  log: Logger;
  now: () => number;
  /** This replica's name (the miners table, logs, welcome frames). */
  replica: string;
  /** Every model a miner has advertised to this replica since it started (waiting reasons). */
  advertisedModels: Set<string>;
  /** Decode speeds and job times miners reported lately, for estimates (fed by SpeedFeed). */
  speeds: ObservedSpeeds;
}
