import type { RevocationHolder } from "../auth/revocation-watcher.js";

/** One open event stream: `end()` finishes it (the client reconnects with Last-Event-ID). */
export interface OpenStream {
  keyId: string;
  end: () => void;
}

/**
 * The open event streams (GET /v1/jobs/{id}/events), by key: at most `maxPerKey` each, ended
 * when their key is revoked or the coordinator closes.
 */
export class StreamRegistry implements RevocationHolder {
  private readonly byKey = new Map<string, Set<OpenStream>>();

  constructor(private maxPerKey: number) {}

  setLimit(maxPerKey: number): void {
    this.maxPerKey = maxPerKey;
  }

  /** Whether the key may open one more stream now. */
  hasRoom(keyId: string): boolean {
    return (this.byKey.get(keyId)?.size ?? 0) < this.maxPerKey;
  }

  add(stream: OpenStream): void {
    const set = this.byKey.get(stream.keyId) ?? new Set<OpenStream>();
    set.add(stream);
    this.byKey.set(stream.keyId, set);
  }

  remove(stream: OpenStream): void {
    const set = this.byKey.get(stream.keyId);
    if (set === undefined) return;
    set.delete(stream);
    if (set.size === 0) this.byKey.delete(stream.keyId);
  }

  count(keyId?: string): number {
    if (keyId !== undefined) return this.byKey.get(keyId)?.size ?? 0;
    let n = 0;
    for (const set of this.byKey.values()) n += set.size;
    return n;
  }

  keyIdsInUse(): Iterable<string> {
    return this.byKey.keys();
  }

  revoked(keyId: string): void {
    for (const s of [...(this.byKey.get(keyId) ?? [])]) s.end();
  }

  endAll(): void {
    for (const set of [...this.byKey.values()]) for (const s of [...set]) s.end();
  }
}

/** The headers of every Server-Sent Events answer (no caching, no proxy buffering). */
export const SSE_HEADERS = {
  "Content-Type": "text/event-stream; charset=utf-8",
  "Cache-Control": "no-cache, no-transform",
  Connection: "keep-alive",
  "X-Accel-Buffering": "no",
} as const;
