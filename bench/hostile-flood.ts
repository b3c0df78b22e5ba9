/**
 * The attackers of `npm run bench:hostile`, in their own process (so their work does not share
 * the prober's event loop): one miner key that floods progress frames and heartbeats (thousands
 * of entries naming its one lease) and reconnects whenever the coordinator closes it, and one
 * client key that floods submits and event-stream opens with 16 requests in flight. Runs until
 * killed; prints what it sent and what it got back as one JSON line on SIGTERM.
 *
 * argv: <coordinator url> <miner key> <client key>
 */
import { WebSocket } from "ws";
import { PROTOCOL_VERSION } from "../src/protocol/version.js";

const [url, minerKey, clientKey] = process.argv.slice(2) as [string, string, string];
const wsUrl = `${url.replace(/^http/, "ws")}/v1/miners/connect`;
const tally: Record<string, number> = {};
const count = (k: string): void => {
  tally[k] = (tally[k] ?? 0) + 1;
};
let stopping = false;

function floodMiner(): void {
  if (stopping) return;
  const ws = new WebSocket(wsUrl, { headers: { authorization: `Bearer ${minerKey}` } });
  count("miner connections");
  let lease: { job_id: string; attempt: number; lease_token: string } | undefined;
  // Frames are built once per lease and sent again and again: the attacker's own CPU goes to sending.
  let progress = "";
  let heartbeat = "";
  const build = (): void => {
    const entry = lease === undefined ? { job_id: "job_nosuchjob", attempt: 1, lease_token: "x", state: "running" } : { ...lease, state: "running" };
    progress = lease === undefined ? "" : JSON.stringify({ type: "progress", ...lease, tokens: 1_000_000, max_tokens: 64, tokens_per_s: 1e9 });
    heartbeat = JSON.stringify({ type: "heartbeat", in_flight: Array(4000).fill(entry), free_slots: 0 });
  };
  build();
  const burst = (): void => {
    if (ws.readyState !== ws.OPEN) return;
    // Send while the socket drains; never hold more than ~1 MiB in ws's buffer.
    if (ws.bufferedAmount < 1 << 20) {
      if (progress !== "") {
        for (let i = 0; i < 200; i++) ws.send(progress);
        count("progress frames (×200)");
      }
      ws.send(heartbeat);
      count("heartbeats of 4000 entries");
    }
    setImmediate(burst);
  };
  ws.on("open", () => {
    ws.send(
      JSON.stringify({
        type: "hello",
        protocol_version: PROTOCOL_VERSION,
        instance_id: "bench-flooder",
        miner_name: "flooder",
        version: "0.0.0-bench",
        gpus: [],
        models: ["bench-model"],
        slots: 4096,
        free_slots: 4096,
        in_flight: Array.from({ length: 4096 }, (_, i) => ({ job_id: `job_bogus${i}`, attempt: 1, lease_token: "x", state: "running" })),
      }),
    );
  });
  ws.on("message", (d: Buffer) => {
    const f = JSON.parse(d.toString()) as { type: string; code?: string; job?: { job_id: string }; attempt?: number; lease_token?: string };
    if (f.type === "welcome") {
      ws.send(JSON.stringify({ type: "pull", free_slots: 4096 }));
      burst();
    } else if (f.type === "assign" && f.job !== undefined) {
      lease = { job_id: f.job.job_id, attempt: f.attempt!, lease_token: f.lease_token! };
      build();
      ws.send(JSON.stringify({ type: "started", ...lease }));
    } else if (f.type === "error") count(`miner error frames: ${f.code}`);
  });
  ws.on("close", (code: number) => {
    count(`miner closes: ${code}`);
    setTimeout(floodMiner, 10);
  });
  ws.on("unexpected-response", (_req, res) => {
    count(`miner upgrades refused: ${res.statusCode}`);
    res.resume();
    ws.terminate();
  });
  ws.on("error", () => undefined);
}

/** Streams the client keeps open (the coordinator allows a key 20; the rest are refused). */
const held: AbortController[] = [];

async function floodClient(): Promise<void> {
  const auth = { authorization: `Bearer ${clientKey}` };
  const body = JSON.stringify({ model: "bench-model", input: "flood", parameters: { max_new_tokens: 64 } });
  const first = await fetch(`${url}/v1/jobs`, { method: "POST", headers: { ...auth, "content-type": "application/json" }, body });
  const { job_id: jobId } = (await first.json()) as { job_id: string };
  const one = async (i: number): Promise<void> => {
    while (!stopping) {
      try {
        if (i % 2 === 0) {
          const r = await fetch(`${url}/v1/jobs`, { method: "POST", headers: { ...auth, "content-type": "application/json" }, body });
          count(`submits: ${r.status}`);
          await r.arrayBuffer();
        } else {
          const ac = new AbortController();
          const r = await fetch(`${url}/v1/jobs/${jobId}/events`, { headers: auth, signal: ac.signal });
          count(`stream opens: ${r.status}`);
          if (r.status === 200) held.push(ac);
          else await r.arrayBuffer();
        }
      } catch {
        count("client errors");
      }
    }
  };
  await Promise.all(Array.from({ length: 16 }, (_, i) => one(i)));
}

process.on("SIGTERM", () => {
  stopping = true;
  for (const ac of held) ac.abort();
  // Exit once the line is out: a pipe's write is asynchronous.
  process.stdout.write(`${JSON.stringify(tally)}\n`, () => process.exit(0));
});
// BENCH_FLOOD=miner|client runs one attacker alone (to see which costs what); default both.
const which = process.env.BENCH_FLOOD ?? "both";
if (which !== "client") floodMiner();
if (which !== "miner") void floodClient();
