import type { Command } from "commander";
import { ApiError } from "../../client/api-error.js";
import { resolveClientSettings } from "../../client/client-settings.js";
import { errorMessage } from "../../common/errors.js";
import { withConnectionOptions, type ConnectionOptions } from "../cli-options.js";
import { UsageError, describeError, exitCodeOf } from "../exit-codes.js";

interface AdminOptions extends ConnectionOptions {
  json?: boolean;
}

/** What the admin commands print of GET /v1/admin/miners and /v1/admin/jobs (the fields they use). */
interface MinerItem {
  miner_id: string;
  name: string;
  replica: string | null;
  connected: boolean;
  drained: boolean;
  draining: boolean;
  gpus: { name: string }[];
  models: string[];
  slots: number;
  slots_used: number;
  tokens_per_second: number | null;
  jobs_done: number;
  jobs_failed: number;
  last_error: { code: string } | null;
}
interface JobItem {
  job_id: string;
  tenant: string;
  model: string;
  status: string;
  progress: number;
  miner_id: string | null;
  created_at: string;
  retry_of: string | null;
}

const HELP_FOOTER = `
The operator key is found as for \`aitbc jobs\`: --key / --key-file > AITBC_KEY >
~/.config/aitbc/client.toml (or --client-config FILE). Make one with
\`aitbc keys create --operator --name NAME\`.`;

/** A small client of the operator endpoints (/v1/admin/…); errors are the coordinator's problem documents. */
class AdminClient {
  constructor(
    private readonly url: string,
    private readonly key: string,
  ) {}

  async call<T>(method: "GET" | "POST", path: string): Promise<T> {
    let res: Response;
    try {
      res = await fetch(`${this.url.replace(/\/+$/, "")}${path}`, { method, headers: { authorization: `Bearer ${this.key}` } });
    } catch (err) {
      throw new ApiError(0, "unreachable", `cannot reach the coordinator at ${this.url}: ${errorMessage(err)}`);
    }
    const text = await res.text();
    let body: unknown;
    try {
      body = text === "" ? {} : JSON.parse(text);
    } catch {
      body = {};
    }
    if (!res.ok) {
      const p = body as { code?: unknown; detail?: unknown };
      throw new ApiError(res.status, typeof p.code === "string" ? p.code : "http_error", typeof p.detail === "string" ? p.detail : `${res.status} ${res.statusText}`);
    }
    return body as T;
  }
}

function withConnection(cmd: Command): Command {
  return withConnectionOptions(cmd, { what: "operator key", fallback: "AITBC_KEY, client.toml" }).option("--json", "print the API's JSON");
}

function clientFor(opts: ConnectionOptions): AdminClient {
  const s = resolveClientSettings({ url: opts.url, key: opts.key, keyFile: opts.keyFile, clientConfig: opts.clientConfig });
  return new AdminClient(s.url, s.key);
}

/** Runs an action; a thrown error becomes one line on stderr and its code in the shared table (exit-codes.ts). */
function action<A extends unknown[]>(fn: (...args: A) => Promise<void>): (...args: A) => Promise<void> {
  return async (...args: A) => {
    try {
      await fn(...args);
    } catch (err) {
      process.stderr.write(`aitbc: ${describeError(err)}\n`);
      process.exitCode = exitCodeOf(err);
    }
  };
}

function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]?.length ?? 0)));
  const line = (cells: string[]): string => `${cells.map((c, i) => c.padEnd(widths[i] ?? 0)).join("  ").trimEnd()}\n`;
  return line(header) + rows.map(line).join("");
}

function minerState(m: MinerItem): string {
  return !m.connected ? "offline" : m.drained ? "drained" : m.draining ? "draining" : "online";
}

/**
 * `aitbc admin miners|jobs|drain|undrain|disconnect|cancel|retry`: the operator endpoints from a
 * terminal (a table by default, the API's JSON with --json). Miner arguments take an id
 * (miner_…) or a name.
 */
export function registerAdminCommand(program: Command): void {
  const admin = program.command("admin").description("operate the fleet: miners, jobs of every tenant, drain, retry (an operator key)").addHelpText("after", HELP_FOOTER);

  withConnection(admin.command("miners").description("list the fleet's miners (connected first)")).action(
    action(async (opts: AdminOptions) => {
      const r = await clientFor(opts).call<{ items: MinerItem[] }>("GET", "/v1/admin/miners");
      if (opts.json === true) return void process.stdout.write(`${JSON.stringify(r.items, null, 2)}\n`);
      const rows = r.items.map((m) => [
        m.name,
        m.miner_id,
        minerState(m),
        m.replica ?? "-",
        m.gpus.length === 0 ? "CPU" : m.gpus.map((g) => g.name).join(", "),
        m.models.join(","),
        `${m.slots_used}/${m.slots}`,
        m.tokens_per_second === null ? "-" : m.tokens_per_second.toFixed(1),
        `${m.jobs_done}/${m.jobs_failed}`,
        m.last_error?.code ?? "-",
      ]);
      process.stdout.write(table(["NAME", "ID", "STATE", "REPLICA", "GPUS", "MODELS", "SLOTS", "TOK/S", "DONE/FAILED", "LAST ERROR"], rows));
    }),
  );

  withConnection(
    admin
      .command("jobs")
      .description("list every tenant's jobs, newest first")
      .option("--status <state>", "only jobs in this state")
      .option("--model <model>", "only this model")
      .option("--tenant <tenant>", "only this tenant")
      .option("--miner <id>", "only jobs this miner ran last")
      .option("--from <time>", "created at or after (ISO time)")
      .option("--to <time>", "created at or before (ISO time)")
      .option("--limit <n>", "at most this many (1-500, default 50)")
      .option("--cursor <cursor>", "the next page, as printed after the table"),
  ).action(
    action(async (opts: AdminOptions & { status?: string; model?: string; tenant?: string; miner?: string; from?: string; to?: string; limit?: string; cursor?: string }) => {
      const q = new URLSearchParams();
      for (const [k, v] of [["status", opts.status], ["model", opts.model], ["tenant", opts.tenant], ["miner_id", opts.miner], ["from", opts.from], ["to", opts.to], ["limit", opts.limit], ["cursor", opts.cursor]] as const) {
        if (v !== undefined) q.set(k, v);
      }
      const r = await clientFor(opts).call<{ items: JobItem[]; total: number; next_cursor: string | null }>("GET", `/v1/admin/jobs${q.size === 0 ? "" : `?${q.toString()}`}`);
      if (opts.json === true) return void process.stdout.write(`${JSON.stringify(r, null, 2)}\n`);
      const rows = r.items.map((j) => [j.job_id, j.tenant, j.model, j.status, `${j.progress}%`, j.miner_id ?? "-", j.created_at, j.retry_of ?? "-"]);
      process.stdout.write(table(["JOB", "TENANT", "MODEL", "STATUS", "PROGRESS", "MINER", "CREATED", "RETRY OF"], rows));
      process.stderr.write(`${r.items.length} of ${r.total}${r.next_cursor === null ? "" : `; next page: --cursor ${r.next_cursor}`}\n`);
    }),
  );

  /** A miner named by id or name → its id. */
  const minerId = async (client: AdminClient, ref: string): Promise<string> => {
    if (/^miner_[a-z0-9]+$/.test(ref)) return ref;
    const r = await client.call<{ items: MinerItem[] }>("GET", "/v1/admin/miners");
    const found = r.items.filter((m) => m.name === ref);
    if (found.length === 1) return found[0]!.miner_id;
    throw new UsageError(found.length === 0 ? `no miner named ${ref}` : `${found.length} miners are named ${ref}: give its id (aitbc admin miners)`);
  };

  for (const [verb, what] of [
    ["drain", "stop giving a miner new jobs (kept across reconnects until undrained)"],
    ["undrain", "let a drained miner take jobs again"],
    ["disconnect", "close a miner's connection and hand its leases back (it reconnects: drain it first)"],
  ] as const) {
    withConnection(admin.command(verb).description(what).argument("<miner>", "miner id or name")).action(
      action(async (ref: string, opts: AdminOptions) => {
        const client = clientFor(opts);
        const id = await minerId(client, ref);
        const r = await client.call<Record<string, unknown>>("POST", `/v1/admin/miners/${encodeURIComponent(id)}/${verb}`);
        if (opts.json === true) return void process.stdout.write(`${JSON.stringify(r, null, 2)}\n`);
        process.stderr.write(`${verb === "drain" ? "drained" : verb === "undrain" ? "undrained" : "disconnected"} ${id}\n`);
      }),
    );
  }

  for (const [verb, what] of [
    ["cancel", "cancel any tenant's job"],
    ["retry", "retry a failed, timed-out, expired or cancelled job as a new job (prints its id)"],
  ] as const) {
    withConnection(admin.command(verb).description(what).argument("<job>", "job id")).action(
      action(async (jobId: string, opts: AdminOptions) => {
        const r = await clientFor(opts).call<{ job_id: string; status: string }>("POST", `/v1/admin/jobs/${encodeURIComponent(jobId)}/${verb}`);
        if (opts.json === true) return void process.stdout.write(`${JSON.stringify(r, null, 2)}\n`);
        if (verb === "retry") process.stdout.write(`${r.job_id}\n`);
        else process.stderr.write(`${r.job_id}: ${r.status}\n`);
      }),
    );
  }
}
