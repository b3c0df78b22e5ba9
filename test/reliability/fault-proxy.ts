import { connect, createServer, type Server, type Socket } from "node:net";

/** What the proxy does with bytes right now. */
export type ProxyMode = { kind: "pass" } | { kind: "delay"; ms: number } | { kind: "blackhole" };

interface Pipe {
  id: number;
  client: Socket;
  upstream: Socket;
  /** Bytes seen per direction (forwarded or held). */
  bytes: { toUpstream: number; toClient: number };
  /** Bytes held while blackholed, per direction, flushed in order on heal. */
  held: { toUpstream: Buffer[]; toClient: Buffer[] };
}

/**
 * A TCP proxy between miners and the coordinator that a test controls. `pass` forwards;
 * `delay` forwards every chunk after N ms (order kept); `blackhole` stops forwarding but keeps
 * both sockets open, holding the bytes as a partitioned TCP link would (they arrive after the
 * heal, like retransmissions); `cut()` destroys every open connection (new ones still pass).
 */
export class FaultProxy {
  private server: Server | undefined;
  private readonly pipes = new Set<Pipe>();
  private mode: ProxyMode = { kind: "pass" };
  port = 0;
  /** Connections accepted so far. */
  connections = 0;
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
    this.note(`mode ${JSON.stringify(mode)}`);
    this.mode = mode;
    if (mode.kind !== "blackhole") {
      for (const p of this.pipes) {
        for (const b of p.held.toUpstream.splice(0)) this.forward(p.upstream, b);
        for (const b of p.held.toClient.splice(0)) this.forward(p.client, b);
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
    const pipe: Pipe = { id, client, upstream, bytes: { toUpstream: 0, toClient: 0 }, held: { toUpstream: [], toClient: [] } };
    this.pipes.add(pipe);
    this.note(`#${id} accepted from :${client.remotePort}`);
    upstream.on("connect", () => this.note(`#${id} upstream connected :${upstream.localPort} -> :${upstream.remotePort}`));
    // "close" passes a hadError flag, "error" the error.
    const end = (why: string) => (err?: unknown): void => {
      if (this.pipes.delete(pipe)) this.note(`#${id} ended: ${why}${err instanceof Error ? ` ${err.message}` : ""} bytes ${JSON.stringify(pipe.bytes)}`);
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

  private route(p: Pipe, dir: "toUpstream" | "toClient", b: Buffer): void {
    const to = dir === "toUpstream" ? p.upstream : p.client;
    p.bytes[dir] += b.length;
    const m = this.mode;
    // Once bytes are held, later ones queue behind them so the stream keeps its order.
    if (m.kind === "blackhole" || p.held[dir].length > 0) {
      p.held[dir].push(b);
      return;
    }
    if (m.kind === "delay") setTimeout(() => this.forward(to, b), m.ms);
    else this.forward(to, b);
  }

  private forward(to: Socket, b: Buffer): void {
    if (!to.destroyed) to.write(b);
  }
}
