import { RESULT_MAX_CHUNKS, type ResultChunkFrame } from "../../protocol/frames.js";

/** Decoded size of a chunk's base64 data (what it stands for; the string held is 4/3 of it). */
function chunkBytes(frame: ResultChunkFrame): number {
  return Math.floor((frame.data.length * 3) / 4);
}

/** Bytes of result chunks held in memory by all connections together (`[gateway] max_buffered_result_bytes`). */
export class ResultBufferPool {
  private used = 0;

  constructor(readonly maxBytes: number) {}

  get usedBytes(): number {
    return this.used;
  }

  tryReserve(n: number): boolean {
    if (this.used + n > this.maxBytes) return false;
    this.used += n;
    return true;
  }

  release(n: number): void {
    this.used = Math.max(0, this.used - n);
  }
}

interface Pending {
  chunks: ResultChunkFrame[];
  bytes: number;
  /** Why this result is refused (a cap was hit); later chunks are dropped, the result acked "invalid". */
  refused?: string;
}

export type ChunkRefusal = { code: "result_buffer_full" | "frame_invalid"; message: string };

/**
 * One connection's `result_chunk` frames waiting for their `result`, by lease key. Capped per
 * connection and, through the shared pool, in total: a chunk over either cap refuses that result
 * (its chunks are dropped; the result that follows is acked "invalid", so the miner may resend
 * once memory is free) and leaves the lease as it was.
 */
export class ChunkBuffer {
  private readonly byLease = new Map<string, Pending>();
  private bytes = 0;

  constructor(
    private readonly pool: ResultBufferPool,
    private readonly maxBytes: number,
  ) {}

  get bufferedBytes(): number {
    return this.bytes;
  }

  /** Keeps the chunk, or says why the result it belongs to is refused (only the first time). */
  add(key: string, frame: ResultChunkFrame): ChunkRefusal | undefined {
    const p = this.byLease.get(key) ?? { chunks: [], bytes: 0 };
    this.byLease.set(key, p);
    if (p.refused !== undefined) return undefined;
    if (p.chunks.length >= RESULT_MAX_CHUNKS) return this.refuse(p, "frame_invalid", `more than ${RESULT_MAX_CHUNKS} result chunks`);
    const n = chunkBytes(frame);
    if (this.bytes + n > this.maxBytes) {
      return this.refuse(p, "result_buffer_full", `result chunks over ${this.maxBytes} bytes buffered on this connection: the result is refused, send it again`);
    }
    if (!this.pool.tryReserve(n)) {
      return this.refuse(p, "result_buffer_full", "the coordinator's result buffers are full: the result is refused, send it again later");
    }
    this.bytes += n;
    p.bytes += n;
    p.chunks.push(frame);
    return undefined;
  }

  /** The chunks for a result (and whether it was refused), removed from the buffer. */
  take(key: string): { chunks: ResultChunkFrame[]; refused?: string } {
    const p = this.byLease.get(key);
    if (p === undefined) return { chunks: [] };
    this.drop(key, p);
    return p.refused === undefined ? { chunks: p.chunks } : { chunks: [], refused: p.refused };
  }

  /** Frees everything (the connection closed). */
  clear(): void {
    for (const [key, p] of this.byLease) this.drop(key, p);
  }

  private refuse(p: Pending, code: ChunkRefusal["code"], message: string): ChunkRefusal {
    this.release(p);
    p.chunks = [];
    p.refused = message;
    return { code, message };
  }

  private drop(key: string, p: Pending): void {
    this.release(p);
    this.byLease.delete(key);
  }

  private release(p: Pending): void {
    this.bytes -= p.bytes;
    this.pool.release(p.bytes);
    p.bytes = 0;
  }
}
