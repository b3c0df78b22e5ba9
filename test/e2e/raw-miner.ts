import { createHash } from "node:crypto";
import { WebSocket } from "ws";
import type { AssignFrame, CoordinatorFrame, HelloFrame, InFlight, MinerFrame, WelcomeFrame } from "../../src/protocol/frames.js";
import { PROTOCOL_VERSION } from "../../src/protocol/version.js";
import { waitFor } from "./cluster.js";

/**
 * A raw `ws` client playing a miner frame by frame against the real coordinator process, for
 * tests that need frames a real miner would never send in that order (or at that moment).
 */
export class RawMiner {
  readonly frames: CoordinatorFrame[] = [];
  closed: { code: number; reason: string } | undefined;

  private constructor(readonly ws: WebSocket) {
    ws.on("message", (d: Buffer) => this.frames.push(JSON.parse(d.toString()) as CoordinatorFrame));
    ws.on("close", (code: number, reason: Buffer) => (this.closed = { code, reason: reason.toString() }));
  }

  static open(url: string, key: string): Promise<RawMiner> {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url, { headers: { authorization: `Bearer ${key}` } });
      const m = new RawMiner(ws);
      ws.once("open", () => resolve(m));
      ws.once("unexpected-response", (_req, res) => reject(new Error(`upgrade refused: ${res.statusCode}`)));
      ws.once("error", reject);
    });
  }

  /** Connects, says hello as a CPU miner serving tiny-gpt2 and returns the welcome. */
  static async hello(url: string, key: string, name: string, inFlight: InFlight[] = []): Promise<{ m: RawMiner; welcome: WelcomeFrame }> {
    const m = await RawMiner.open(url, key);
    m.send(helloFrame(name, inFlight));
    const welcome = await m.next<WelcomeFrame>((f) => f.type === "welcome");
    return { m, welcome };
  }

  send(frame: MinerFrame | Record<string, unknown>): void {
    this.ws.send(JSON.stringify(frame));
  }

  sendRaw(text: string): void {
    this.ws.send(text);
  }

  /** The first frame received (now or later) that matches, removed from the list. */
  async next<F extends CoordinatorFrame>(match: (f: CoordinatorFrame) => boolean, timeoutMs = 20_000): Promise<F> {
    const found = await waitFor(
      "a frame",
      () => Promise.resolve(this.frames.findIndex(match)),
      (i) => i >= 0,
      timeoutMs,
      20,
    );
    return this.frames.splice(found, 1)[0] as F;
  }

  waitClosed(): Promise<{ code: number; reason: string }> {
    return waitFor("close", () => Promise.resolve(this.closed), (c) => c !== undefined).then((c) => c!);
  }

  close(): void {
    this.ws.terminate();
  }
}

/**
 * The instance id of every raw miner's hello unless a test sets another: all raw miners of a
 * test process count as one miner process, so a second hello under a name is a reconnect (it
 * replaces the session) — tests of duplicate miners pass their own ids.
 */
export const RAW_INSTANCE_ID = "raw-miner-instance";

/** A CPU miner's hello serving tiny-gpt2 with one slot, resuming `inFlight`. */
export function helloFrame(name: string, inFlight: InFlight[] = []): HelloFrame {
  return {
    type: "hello",
    protocol_version: PROTOCOL_VERSION,
    instance_id: RAW_INSTANCE_ID,
    miner_name: name,
    version: "0.0.0-test",
    gpus: [],
    models: ["tiny-gpt2"],
    slots: 1,
    free_slots: 1,
    in_flight: inFlight,
  };
}

export function resultFrame(a: AssignFrame, output: string): MinerFrame {
  return {
    type: "result",
    job_id: a.job.job_id,
    attempt: a.attempt,
    lease_token: a.lease_token,
    output,
    output_bytes: Buffer.byteLength(output),
    sha256: createHash("sha256").update(output).digest("hex"),
    finish_reason: "length",
    usage: { prompt_tokens: 3, completion_tokens: 5 },
    timing: { time_to_first_token_ms: 1, tokens_per_second: 50, total_ms: 100 },
  };
}

/** Matches the ack of (job, attempt). */
export const isAck =
  (jobId: string, attempt: number) =>
  (f: CoordinatorFrame): boolean =>
    f.type === "ack" && f.job_id === jobId && f.attempt === attempt;
