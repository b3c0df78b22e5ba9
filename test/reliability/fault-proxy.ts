import { connect, createServer, type Server, type Socket } from "node:net";

/** What the proxy does with bytes right now. */
export type ProxyMode = { kind: "pass" } | { kind: "delay"; ms: number } | { kind: "blackhole" };

/** A chunk the proxy held back in `delay` mode (performance.now() times). */
export interface DelayedChunk {
  /** toUpstream: miner → coordinator; toClient: coordinator → miner. */
  dir: "toUpstream" | "toClient";
  bytes: number;
  receivedAt: number;
  /** When it was written on; unset while still held. */
  forwardedAt?: number;
}

type Direction = "toUpstream" | "toClient";

/** A chunk on its way out, written once `due` (performance.now()) has passed. */
interface Outgoing {
  b: Buffer;
  due: number;
  record?: DelayedChunk;
}

interface Pipe {
  id: number;
  client: Socket;
  upstream: Socket;
  /** Bytes seen per direction (forwarded or held). */
  bytes: Record<Direction, number>;
  /** Bytes held while blackholed, per direction, released in order on heal. */
  held: Record<Direction, Buffer[]>;
  /** Bytes on their way out, per direction, in arrival order: one FIFO, so a stream keeps its order. */
  out: Record<Direction, Outgoing[]>;
  timers: Partial<Record<Direction, NodeJS.Timeout>>;
}

/**
 * A TCP proxy between miners and the coordinator that a test controls. `pass` forwards;
 * `delay` holds every chunk at least N ms by the monotonic clock (each recorded in `delayed`);
 * `blackhole` stops forwarding but keeps both sockets open, holding the bytes as a partitioned
 * TCP link would (they arrive after the heal, like retransmissions); `cut()` destroys every
 * open connection (new ones still pass). Bytes leave in the order they came whatever the mode
 * changes in between: a chunk that passes queues behind the delayed ones before it, as on a
 * real link (reordered chunks would corrupt the WebSocket stream, a fault nobody asked for).
 */
export class FaultProxy {
  private server: Server | undefined;
  private readonly pipes = new Set<Pipe>();
  private mode: ProxyMode = { kind: "pass" };
  port = 0;
  /** Connections accepted so far. */
  connections = 0;
  /** Every chunk delayed so far, in arrival order: what a test checks to know a delay held traffic back. */
  readonly delayed: DelayedChunk[] = [];
  /** What happened to every connection and mode, timestamped: written out when a test fails. */
  readonly events: string[] = [];

  constructor(private readonly targetPort: number) {}

  async start(): Promise<void> {
    this.server = createServer((client) => this.accept(client));
    await new Promise<void>((resolve, reject) => {
      this.server!.once("error", reject);
      this.server!.listen(0, "127.0.0.1", () => resolve());
    });
    const addr = this.server.address();
    this.port = typeof addr === "object" && addr !== null ? addr.port : 0;
  }

  get url(): string {
    return `ws://127.0.0.1:${this.port}`;
  }

  setMode(mode: ProxyMode): void {
    this.mode = mode;
    this.note(`mode ${JSON.stringify(mode)}`);
    if (mode.kind !== "blackhole") {
      for (const p of this.pipes) {
        for (const dir of ["toUpstream", "toClient"] as const) {
          for (const b of p.held[dir].splice(0)) p.out[dir].push({ b, due: 0 });
          this.pump(p, dir);
        }
      }
    }
  }

  /** Destroys every open connection, both sides. */
  cut(): void {
    this.note(`cut ${this.pipes.size} pipes`);
    for (const p of this.pipes) {
      p.client.destroy();
      p.upstream.destroy();
    }
    this.pipes.clear();
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise<void>((resolve) => (this.server === undefined ? resolve() : this.server.close(() => resolve())));
  }

  /** The proxy as it is now, for a failing test's logs. */
  state(): Record<string, unknown> {
    return {
      port: this.port,
      targetPort: this.targetPort,
      mode: this.mode,
      connections: this.connections,
      pipes: [...this.pipes].map((p) => ({
        id: p.id,
        client: { destroyed: p.client.destroyed, remote: p.client.remotePort },
        upstream: { destroyed: p.upstream.destroyed, connecting: p.upstream.connecting, local: p.upstream.localPort, remote: p.upstream.remotePort },
        bytes: p.bytes,
        heldToUpstream: p.held.toUpstream.reduce((n, b) => n + b.length, 0),
        heldToClient: p.held.toClient.reduce((n, b) => n + b.length, 0),
      })),
    };
  }

  private note(what: string): void {
    this.events.push(`${new Date().toISOString()} ${what}`);
  }

  private accept(client: Socket): void {
    this.connections += 1;
    const id = this.connections;
    const upstream = connect(this.targetPort, "127.0.0.1");
    const pipe: Pipe = { id, client, upstream, bytes: { toUpstream: 0, toClient: 0 }, held: { toUpstream: [], toClient: [] }, out: { toUpstream: [], toClient: [] }, timers: {} };
    this.pipes.add(pipe);
    this.note(`#${id} accepted from :${client.remotePort}`);
    upstream.on("connect", () => this.note(`#${id} upstream connected :${upstream.localPort} -> :${upstream.remotePort}`));
    // "close" passes a hadError flag, "error" the error.
    const end = (why: string) => (err?: unknown): void => {
      if (this.pipes.delete(pipe)) this.note(`#${id} ended: ${why}${err instanceof Error ? ` ${err.message}` : ""} bytes ${JSON.stringify(pipe.bytes)}`);
      clearTimeout(pipe.timers.toUpstream);
      clearTimeout(pipe.timers.toClient);
      client.destroy();
      upstream.destroy();
    };
    client.on("data", (b: Buffer) => this.route(pipe, "toUpstream", b));
    upstream.on("data", (b: Buffer) => this.route(pipe, "toClient", b));
    client.on("close", end("client closed"));
    upstream.on("close", end("upstream closed"));
    client.on("error", end("client error"));
    upstream.on("error", end("upstream error"));
  }

  private route(p: Pipe, dir: Direction, b: Buffer): void {
    p.bytes[dir] += b.length;
    const m = this.mode;
    // Once bytes are held, later ones queue behind them so the stream keeps its order.
    if (m.kind === "blackhole" || p.held[dir].length > 0) {
      p.held[dir].push(b);
      return;
    }
    const now = performance.now();
    if (m.kind === "delay") {
      const record: DelayedChunk = { dir, bytes: b.length, receivedAt: now };
      this.delayed.push(record);
      p.out[dir].push({ b, due: now + m.ms, record });
    } else p.out[dir].push({ b, due: now });
    this.pump(p, dir);
  }

  /**
   * Writes the chunks that are due, in order, and arms one timer for the next. A timer can fire
   * a little early by performance.now() (Node counts from the loop's cached time), so a chunk
   * not yet due waits for another round instead of leaving early.
   */
  private pump(p: Pipe, dir: Direction): void {
    const q = p.out[dir];
    const to = dir === "toUpstream" ? p.upstream : p.client;
    let now = performance.now();
    while (q.length > 0 && q[0]!.due <= now) {
      const item = q.shift()!;
      if (item.record !== undefined) item.record.forwardedAt = now;
      if (!to.destroyed) to.write(item.b);
      now = performance.now();
    }
    if (q.length === 0 || p.timers[dir] !== undefined) return;
    p.timers[dir] = setTimeout(() => {
      p.timers[dir] = undefined;
      this.pump(p, dir);
    }, Math.max(1, Math.ceil(q[0]!.due - now)));
  }
}
