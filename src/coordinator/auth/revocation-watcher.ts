import { errorMessage } from "../../common/errors.js";
import type { Logger } from "../../common/logger.js";
import type { JobStore } from "../store/job-store.js";

/** Something that holds connections opened with API keys (the miner gateway, event streams). */
export interface RevocationHolder {
  /** Ids of the keys its open connections were authenticated with. */
  keyIdsInUse(): Iterable<string>;
  /** The key was revoked: end what it holds. */
  revoked(keyId: string): void | Promise<void>;
}

/**
 * Makes a revocation reach connections that are already open. `aitbc keys revoke` writes the
 * store from another process; every `intervalMs` this asks the store which of the keys in use by
 * open connections are revoked now (one query over those ids only) and tells the holders. A
 * request on its own is refused as soon as the key is revoked, since each one authenticates.
 */
export class RevocationWatcher {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> = Promise.resolve();
  private readonly handled = new Set<string>();

  constructor(
    private readonly store: JobStore,
    private readonly holders: RevocationHolder[],
    private readonly intervalMs: number,
    private readonly log: Logger,
  ) {}

  start(): void {
    this.timer = setInterval(() => {
      this.running = this.check().catch((err: unknown) => this.log.warn({ err: errorMessage(err) }, "revocation check failed"));
    }, this.intervalMs);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    await this.running;
  }

  /** One pass; exposed for tests. */
  async check(): Promise<void> {
    const inUse = new Set<string>();
    for (const h of this.holders) for (const id of h.keyIdsInUse()) inUse.add(id);
    if (inUse.size === 0) return;
    for (const keyId of await this.store.revokedAmong([...inUse])) {
      // A holder may still list the key while its connections close; tell it once.
      if (this.handled.has(keyId)) continue;
      this.handled.add(keyId);
      this.log.info({ keyId }, "key revoked: ending its open connections");
      for (const h of this.holders) await h.revoked(keyId);
    }
  }
}
