import { readFileSync, writeFileSync } from "node:fs";
import { InvalidArgumentError, Option, type Command } from "commander";
import cliProgress from "cli-progress";
import { AppError, errorMessage } from "../../common/errors.js";
import { ApiClient } from "../../client/api-client.js";
import { resolveClientSettings } from "../../client/client-settings.js";
import { terminalLine, terminalText } from "../../client/terminal-text.js";
import { EXIT, UsageError } from "../exit-codes.js";
import { withConnectionOptions, type ConnectionOptions } from "../cli-options.js";
import type { JobStatus, OutputFormat, SubmitJobBody } from "../../protocol/jobs.js";
import { OUTPUT_FORMATS } from "../../protocol/jobs.js";
import { JOB_STATES, PRIORITIES, type JobState, type Priority } from "../../protocol/version.js";

/** Printed after each jobs command's --help (the exit codes follow, the same for every command). */
const HELP_FOOTER = `
Coordinator and key (each decided on its own, first match wins):
  --url / --key or --key-file  >  AITBC_URL / AITBC_KEY  >  ~/.config/aitbc/client.toml
  (or --client-config FILE; keys: url, key)  >  http://127.0.0.1:8080 and data/local-client.key
  (written by \`aitbc up\` / \`npm start\` in the current directory)

API errors print one line: aitbc: <detail> (<code>, HTTP <status>)`;

interface SubmitOptions extends ConnectionOptions {
  model: string;
  input?: string;
  inputFile?: string;
  maxNewTokens?: number;
  temperature?: number;
  topK?: number;
  topP?: number;
  repetitionPenalty?: number;
  stop: string[];
  seed?: number;
  priority?: Priority;
  timeoutSeconds?: number;
  gpuType?: string;
  gpuCount?: number;
  minVramGb?: number;
  format?: OutputFormat;
  idempotencyKey?: string;
  wait?: boolean;
  stream?: boolean;
  output?: string;
  raw?: boolean;
  json?: boolean;
}

/**
 * The ends of an open range: the API wants both. A far-future last day, not the client's today,
 * so a client clock behind the coordinator's does not cut off the newest jobs.
 */
const HISTORY_OPEN = { from: "1970-01-01", to: "9999-12-31" } as const;

function integer(v: string): number {
  if (!/^-?\d+$/.test(v.trim())) throw new InvalidArgumentError("expected an integer");
  return Number.parseInt(v, 10);
}

function decimal(v: string): number {
  const n = Number(v);
  if (v.trim() === "" || !Number.isFinite(n)) throw new InvalidArgumentError("expected a number");
  return n;
}

function collect(v: string, all: string[]): string[] {
  return [...all, v];
}

function withConnection(cmd: Command): Command {
  return withConnectionOptions(cmd, { what: "client API key", fallback: "AITBC_KEY, client.toml, data/local-client.key" });
}

function clientFor(opts: ConnectionOptions): ApiClient {
  const s = resolveClientSettings({ url: opts.url, key: opts.key, keyFile: opts.keyFile, clientConfig: opts.clientConfig });
  return new ApiClient({ url: s.url, key: s.key });
}

/**
 * Where a result goes: raw bytes to a file (--output), a pipe or with --raw; on a terminal,
 * text that came from a miner is shown with its control characters escaped (terminal-text.ts).
 */
function writeResult(data: string | Buffer, raw: boolean): void {
  if (raw || process.stdout.isTTY !== true) process.stdout.write(data);
  else process.stdout.write(terminalText(typeof data === "string" ? data : data.toString("utf8")));
}

/** Runs an action that answers with an exit code; a thrown error goes to aitbc.ts (one line, its code from the table). */
function action<A extends unknown[]>(fn: (...args: A) => Promise<number>): (...args: A) => Promise<void> {
  return async (...args: A) => {
    process.exitCode = await fn(...args);
  };
}

function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

/**
 * `aitbc jobs submit|wait|status|list|cancel|download|history`: the client side of the REST API
 * for a person at a terminal (a progress bar when stderr is a TTY, plain lines otherwise) and for
 * scripts (--json prints the API's JSON; exit codes say how a job ended).
 */
export function registerJobsCommand(program: Command): void {
  const jobs = program
    .command("jobs")
    .description("submit, follow, list, cancel and download jobs (the client CLI)")
    .addHelpText("after", HELP_FOOTER);

  withConnection(
    jobs
      .command("submit")
      .description("submit a text-generation job; prints its id (or, with --wait, follows it and prints the result)")
      .requiredOption("--model <model>", "model name, e.g. tiny-gpt2")
      .option("--input <text>", "the prompt")
      .option("--input-file <file>", "upload this UTF-8 file (POST /v1/files) and use it as the prompt")
      .option("--max-new-tokens <n>", "tokens to generate at most (default 128)", integer)
      .option("--temperature <t>", "sampling temperature, 0 = greedy (default 0.8)", decimal)
      .option("--top-k <k>", "keep the k most likely tokens, 0 disables (default 40)", integer)
      .option("--top-p <p>", "nucleus sampling mass, 1 disables (default 0.95)", decimal)
      .option("--repetition-penalty <r>", "penalty on repeated tokens, 1 disables (default 1.0)", decimal)
      .option("--stop <s>", "stop sequence (repeatable)", collect, [])
      .option("--seed <n>", "sampling seed; same seed, same output", integer)
      .addOption(new Option("--priority <p>", "queue priority").choices(PRIORITIES))
      .option("--timeout-seconds <n>", "bound on the run time", integer)
      .option("--gpu-type <type>", 'required GPU model, e.g. "v100", "h200"')
      .option("--gpu-count <n>", "required GPUs on one miner", integer)
      .option("--min-vram-gb <g>", "required VRAM per GPU, GB", decimal)
      .addOption(new Option("--format <format>", "result format of the download").choices(OUTPUT_FORMATS))
      .option("--idempotency-key <key>", "a retried submit with the same key returns the same job")
      .option("--wait", "follow the job until it ends, then print the result text")
      .option("--stream", "with --wait: print the text on stdout as it is generated (progress stays on stderr)")
      .option("--output <file>", "with --wait: write the result text to this file instead of stdout")
      .option("--raw", "with --wait: print the result as it is even on a terminal (control characters are escaped by default there)")
      .option("--json", "print the API's JSON (with --wait: the final job status)"),
  )
    .addHelpText("after", HELP_FOOTER)
    .action(action(async (opts: SubmitOptions) => submit(opts)));

  withConnection(
    jobs
      .command("wait")
      .description("follow a job until it ends (progress, then the result text)")
      .argument("<job_id>", "job id")
      .option("--output <file>", "write the result text to this file instead of stdout")
      .option("--stream", "print the text on stdout as it is generated (progress stays on stderr)")
      .option("--raw", "print the result as it is even on a terminal (control characters are escaped by default there)")
      .option("--json", "print the final job status as JSON"),
  ).action(
    action(async (jobId: string, opts: ConnectionOptions & { output?: string; raw?: boolean; json?: boolean; stream?: boolean }) => {
      checkStream(opts);
      return follow(clientFor(opts), jobId, { output: opts.output, raw: opts.raw === true, json: opts.json === true, stream: opts.stream === true });
    }),
  );

  withConnection(jobs.command("status").description("show a job's status").argument("<job_id>", "job id").option("--json", "print the API's JSON")).action(
    action(async (jobId: string, opts: ConnectionOptions & { json?: boolean }) => {
      const job = await clientFor(opts).getJob(jobId);
      if (opts.json === true) printJson(job);
      else process.stdout.write(formatStatus(job));
      return EXIT.ok;
    }),
  );

  withConnection(
    jobs
      .command("list")
      .description("list your jobs, newest first")
      .addOption(new Option("--status <state>", "only jobs in this state").choices(JOB_STATES))
      .option("--limit <n>", "jobs per page (default 20)", integer)
      .option("--cursor <cursor>", "the next page (as printed after a page)")
      .option("--json", "print the API's JSON"),
  ).action(
    action(async (opts: ConnectionOptions & { status?: JobState; limit?: number; cursor?: string; json?: boolean }) => {
      const page = await clientFor(opts).listJobs({
        ...(opts.status === undefined ? {} : { status: opts.status }),
        ...(opts.limit === undefined ? {} : { limit: opts.limit }),
        ...(opts.cursor === undefined ? {} : { cursor: opts.cursor }),
      });
      printPage(page, opts.json === true, "list");
      return EXIT.ok;
    }),
  );

  withConnection(
    jobs
      .command("history")
      .description("finished jobs in a date range (UTC days or ISO times, inclusive; either end may be left open)")
      .option("--from <date>", "first day, YYYY-MM-DD (or an ISO time); default: the first job")
      .option("--to <date>", "last day, YYYY-MM-DD (or an ISO time); default: now")
      .option("--limit <n>", "jobs per page (default 50)", integer)
      .option("--cursor <cursor>", "the next page (as printed after a page)")
      .option("--json", "print the API's JSON"),
  ).action(
    action(async (opts: ConnectionOptions & { from?: string; to?: string; limit?: number; cursor?: string; json?: boolean }) => {
      const page = await clientFor(opts).history({
        from: opts.from ?? HISTORY_OPEN.from,
        to: opts.to ?? HISTORY_OPEN.to,
        ...(opts.limit === undefined ? {} : { limit: opts.limit }),
        ...(opts.cursor === undefined ? {} : { cursor: opts.cursor }),
      });
      const range = [opts.from === undefined ? "" : ` --from ${opts.from}`, opts.to === undefined ? "" : ` --to ${opts.to}`].join("");
      printPage(page, opts.json === true, `history${range}`);
      return EXIT.ok;
    }),
  );

  withConnection(jobs.command("cancel").description("cancel a job (a running one stops within one decode step)").argument("<job_id>", "job id").option("--json", "print the API's JSON")).action(
    action(async (jobId: string, opts: ConnectionOptions & { json?: boolean }) => {
      const r = await clientFor(opts).cancelJob(jobId);
      if (opts.json === true) printJson(r);
      else if (r.status === "cancelled") process.stdout.write(`cancelled ${r.job_id}\n`);
      else process.stdout.write(`cancel requested for ${r.job_id} (${r.status}); its miner stops it within one decode step\n`);
      return EXIT.ok;
    }),
  );

  withConnection(
    jobs
      .command("download")
      .description("download a completed job's result as stored (JSON or text, per its --format)")
      .argument("<job_id>", "job id")
      .option("--output <file>", "write to this file instead of stdout")
      .option("--raw", "print it as it is even on a terminal (control characters are escaped by default there)"),
  ).action(
    action(async (jobId: string, opts: ConnectionOptions & { output?: string; raw?: boolean }) => {
      const { body } = await clientFor(opts).download(jobId);
      if (opts.output === undefined) writeResult(body, opts.raw === true);
      else {
        writeOutput(opts.output, body);
        process.stderr.write(`wrote ${body.length} bytes to ${opts.output}\n`);
      }
      return EXIT.ok;
    }),
  );
}

async function submit(opts: SubmitOptions): Promise<number> {
  if ((opts.input === undefined) === (opts.inputFile === undefined)) {
    throw new UsageError("pass exactly one of --input and --input-file");
  }
  if (opts.stream === true && opts.wait !== true) throw new UsageError("--stream needs --wait");
  checkStream(opts);
  if (opts.output !== undefined && opts.wait !== true) {
    throw new UsageError("--output needs --wait (or use aitbc jobs download ID --output FILE)");
  }
  const client = clientFor(opts);
  let input: string;
  if (opts.inputFile !== undefined) {
    let content: Buffer;
    try {
      content = readFileSync(opts.inputFile);
    } catch (err) {
      throw new UsageError(`cannot read --input-file ${opts.inputFile}: ${errorMessage(err)}`);
    }
    input = (await client.uploadFile(content)).file_id;
  } else {
    input = opts.input!;
  }
  const body: SubmitJobBody = { model: opts.model, input };
  const parameters = {
    ...(opts.maxNewTokens === undefined ? {} : { max_new_tokens: opts.maxNewTokens }),
    ...(opts.temperature === undefined ? {} : { temperature: opts.temperature }),
    ...(opts.topK === undefined ? {} : { top_k: opts.topK }),
    ...(opts.topP === undefined ? {} : { top_p: opts.topP }),
    ...(opts.repetitionPenalty === undefined ? {} : { repetition_penalty: opts.repetitionPenalty }),
    ...(opts.stop.length === 0 ? {} : { stop: opts.stop }),
    ...(opts.seed === undefined ? {} : { seed: opts.seed }),
  };
  if (Object.keys(parameters).length > 0) body.parameters = parameters;
  const requirements = {
    ...(opts.gpuType === undefined ? {} : { gpu_type: opts.gpuType }),
    ...(opts.gpuCount === undefined ? {} : { gpu_count: opts.gpuCount }),
    ...(opts.minVramGb === undefined ? {} : { min_vram_gb: opts.minVramGb }),
  };
  if (Object.keys(requirements).length > 0) body.requirements = requirements;
  if (opts.priority !== undefined) body.priority = opts.priority;
  if (opts.timeoutSeconds !== undefined) body.timeout_seconds = opts.timeoutSeconds;
  if (opts.format !== undefined) body.output_config = { destination: "local", format: opts.format };

  const submitted = await client.submitJob(body, opts.idempotencyKey === undefined ? {} : { idempotencyKey: opts.idempotencyKey });
  if (opts.wait !== true) {
    if (opts.json === true) printJson(submitted);
    else {
      process.stdout.write(`${submitted.job_id}\n`);
      process.stderr.write(
        `submitted ${submitted.job_id} (${submitted.status}; estimated ${submitted.estimated_time_seconds} s, cost ${submitted.estimated_cost}); follow it: aitbc jobs wait ${submitted.job_id}\n`,
      );
    }
    return EXIT.ok;
  }
  if (opts.json !== true) process.stderr.write(`submitted ${submitted.job_id}\n`);
  return follow(client, submitted.job_id, { output: opts.output, raw: opts.raw === true, json: opts.json === true, stream: opts.stream === true });
}

function checkStream(opts: { stream?: boolean; output?: string; json?: boolean }): void {
  if (opts.stream !== true) return;
  if (opts.output !== undefined) throw new UsageError("--stream prints the text on stdout: it cannot go with --output");
  if (opts.json === true) throw new UsageError("--stream prints the text on stdout: it cannot go with --json");
}

/**
 * The text as it streams, on stdout. What was printed cannot be taken back: a piece that
 * rewrites printed text (a new attempt, a resend that differs) starts a new line, said on stderr.
 */
class TextPrinter {
  printed = "";
  private attempt: number | undefined;

  constructor(private readonly raw: boolean) {}

  token(attempt: number, index: number, text: string): void {
    if (this.attempt !== undefined && attempt !== this.attempt) this.restart(attempt);
    this.attempt = attempt;
    const next = this.printed.slice(0, Math.min(index, this.printed.length)) + text;
    if (next.startsWith(this.printed)) this.write(next.slice(this.printed.length));
    else {
      this.note("the streamed text changed: printing it again");
      this.write(next);
    }
    this.printed = next;
  }

  restart(attempt: number): void {
    if (this.printed === "" && this.attempt === attempt) return;
    this.note(`attempt ${attempt} generates the text again`);
    this.printed = "";
    this.attempt = attempt;
  }

  /** At the end: what the stream did not show of the result. */
  finish(output: string): void {
    if (output.startsWith(this.printed)) this.write(output.slice(this.printed.length));
    else {
      this.note("the result differs from the streamed text: the result follows");
      this.write(output);
    }
    if (!output.endsWith("\n") || output === "") process.stdout.write("\n");
  }

  private note(line: string): void {
    if (this.printed !== "") process.stdout.write("\n");
    process.stderr.write(`(${line})\n`);
  }

  private write(text: string): void {
    if (text === "") return;
    writeResult(text, this.raw);
  }
}

/** Shows a job's progress: a cli-progress bar on a TTY, throttled plain lines otherwise. */
class ProgressView {
  private bar: cliProgress.SingleBar | undefined;
  private lastLineAt = 0;
  private lastState = "";

  constructor(private readonly tty: boolean) {}

  /** A state line; a state repeated (the snapshot, then the same state from the log) shows once. */
  state(line: string, state: string): void {
    if (this.bar !== undefined) {
      if (state === "completed") this.bar.update(this.bar.getTotal(), { state });
      else this.bar.update({ state });
      return;
    }
    if (state === this.lastState) return;
    this.lastState = state;
    process.stderr.write(`${terminalLine(line)}\n`);
  }

  progress(p: { progress: number; tokens: number; maxTokens: number; tokensPerSecond: number }): void {
    const tps = Math.round(p.tokensPerSecond);
    if (this.tty) {
      if (this.bar === undefined) {
        this.bar = new cliProgress.SingleBar(
          { format: "{state} [{bar}] {percentage}% {value}/{total} tokens {tps} tok/s", stream: process.stderr, hideCursor: true },
          cliProgress.Presets.shades_classic,
        );
        this.bar.start(Math.max(1, p.maxTokens), p.tokens, { state: "running", tps });
      } else {
        this.bar.setTotal(Math.max(1, p.maxTokens));
        this.bar.update(p.tokens, { tps, state: "running" });
      }
      return;
    }
    // Plain lines: at most one a second, but always the first and the last.
    const now = Date.now();
    if (now - this.lastLineAt < 1000 && p.tokens < p.maxTokens) return;
    this.lastLineAt = now;
    this.lastState = "running";
    process.stderr.write(`running ${Math.round(p.progress)}% ${p.tokens}/${p.maxTokens} tokens ${tps} tok/s\n`);
  }

  stop(): void {
    this.bar?.stop();
    this.bar = undefined;
  }

  /**
   * Ctrl-C: the terminal has echoed ^C where the cursor is (on the bar, after streamed text or at
   * the start of a line). Stopping the bar ends its line; without one, a newline does, so the
   * message that follows starts a line of its own.
   */
  interrupt(): void {
    if (this.bar !== undefined) this.stop();
    else if (process.stderr.isTTY === true) process.stderr.write("\n");
  }
}

function stateLine(state: string, data: Record<string, unknown>): string {
  const miner = typeof data.miner_id === "string" ? data.miner_id : undefined;
  switch (state) {
    case "assigned":
      return miner === undefined ? "assigned" : `assigned to ${miner}`;
    case "requeued":
      return typeof data.reason === "string" ? `requeued (${data.reason})` : "requeued";
    case "cancel_requested":
      return "cancel requested";
    default:
      return state;
  }
}

function queuedLine(job: JobStatus): string {
  if (job.eligible_miners === 0) return `queued (${job.waiting_reason === undefined ? "no connected miner can run this job yet" : terminalLine(job.waiting_reason)})`;
  if (job.queue_position !== undefined && job.queue_position > 0) return `queued (${job.queue_position} ahead)`;
  return "queued";
}

/**
 * Follows a job to its end over Server-Sent Events, then prints the result text (completed) or
 * the error; the exit code says which. Ctrl-C only stops following.
 */
async function follow(client: ApiClient, jobId: string, opts: { output?: string | undefined; raw?: boolean; json: boolean; stream?: boolean }): Promise<number> {
  const controller = new AbortController();
  let interrupted = false;
  // Streaming, the bar would share the terminal with the text: plain progress lines instead.
  const view = new ProgressView(process.stderr.isTTY === true && !opts.json && opts.stream !== true);
  const printer = opts.stream === true ? new TextPrinter(opts.raw === true) : undefined;
  const onSigint = (): void => {
    interrupted = true;
    view.interrupt();
    controller.abort();
  };
  process.once("SIGINT", onSigint);
  const quiet = opts.json;
  let snapshot: JobStatus | undefined;
  try {
    for await (const e of client.followJob(jobId, { signal: controller.signal })) {
      if (quiet) continue;
      // The log replays every state from "queued" on, so the snapshot only adds why a job waits
      // (the stream's snapshot has no queue facts; the status endpoint has).
      if (e.type === "snapshot") snapshot = e.job.status === "queued" && e.job.eligible_miners === undefined ? await client.getJob(jobId) : e.job;
      else if (e.type === "state") view.state(e.state === "queued" && snapshot?.status === "queued" ? queuedLine(snapshot) : stateLine(e.state, e.data), e.state);
      else if (e.type === "progress") view.progress(e);
      else if (e.type === "token") printer?.token(e.attempt, e.index, e.text);
      else if (e.type === "text_restart") printer?.restart(e.attempt);
      else view.state(`connection lost, reconnecting in ${(e.delayMs / 1000).toFixed(1)} s`, "reconnecting");
    }
  } finally {
    view.stop();
    process.off("SIGINT", onSigint);
  }
  if (interrupted) {
    process.stderr.write(`stopped following ${jobId}; the job keeps running. Follow it again: aitbc jobs wait ${jobId}\n`);
    return EXIT.interrupted;
  }
  const job = await client.getJob(jobId);
  if (job.status === "completed") {
    const text = await client.resultText(jobId);
    if (printer !== undefined) printer.finish(text);
    else if (opts.output !== undefined) {
      writeOutput(opts.output, Buffer.from(text, "utf8"));
      if (!quiet) process.stderr.write(`wrote the result to ${opts.output}\n`);
    } else if (!quiet) {
      writeResult(text.endsWith("\n") ? text : `${text}\n`, opts.raw === true);
    }
    if (opts.json) printJson(job);
    return EXIT.ok;
  }
  if (opts.json) printJson(job);
  const why = job.error === null ? "" : `: ${terminalLine(job.error.message)} (${terminalLine(job.error.code)})`;
  process.stderr.write(`aitbc: job ${jobId} ${job.status.replace("_", " ")}${why}\n`);
  if (job.status === "cancelled") return EXIT.cancelled;
  if (job.status === "failed" || job.status === "timed_out" || job.status === "expired") return EXIT.failed;
  // The stream ended but the job is not finished: should not happen; say so rather than guess.
  return EXIT.failed;
}

function writeOutput(file: string, data: Buffer): void {
  try {
    writeFileSync(file, data);
  } catch (err) {
    throw new AppError("output_unwritable", `cannot write --output ${file}: ${errorMessage(err)}`, { status: 400 });
  }
}

function formatStatus(job: JobStatus): string {
  const rows: [string, string][] = [
    ["job", job.job_id],
    ["status", job.status + (job.cancel_requested && job.status !== "cancelled" ? " (cancel requested)" : "")],
    ["model", job.model],
    ["progress", `${job.progress}%`],
    ["priority", job.priority],
    ["attempt", String(job.attempt)],
    ["miner", job.miner_id ?? "-"],
    ["created", job.created_at],
    ["started", job.started_at ?? "-"],
    ["completed", job.completed_at ?? "-"],
  ];
  if (job.status === "queued") {
    if (job.queue_position !== undefined) rows.push(["ahead", String(job.queue_position)]);
    if (job.eligible_miners !== undefined) rows.push(["eligible", `${job.eligible_miners} connected miner(s) can run it`]);
  }
  if (job.error !== null) rows.push(["error", `${job.error.message} (${job.error.code})`]);
  if (job.result !== null) {
    const r = job.result;
    rows.push([
      "result",
      `${r.output_bytes} bytes of text, ${r.usage.completion_tokens} tokens, ${r.tokens_per_second.toFixed(1)} tok/s, finish ${r.finish_reason}; aitbc jobs download ${job.job_id}`,
    ]);
  }
  // Every value may come from a miner or another client: one line each, nothing that drives the terminal.
  return rows.map(([k, v]) => `${k.padEnd(10)} ${terminalLine(v)}\n`).join("");
}

function printPage(page: Awaited<ReturnType<ApiClient["listJobs"]>>, json: boolean, again: string): void {
  if (json) {
    printJson(page);
    return;
  }
  const rows = page.jobs.map((j) => [j.job_id, j.status, j.model, `${j.progress}%`, j.created_at, j.completed_at ?? "-"].map(terminalLine));
  const head = ["JOB", "STATUS", "MODEL", "PROGRESS", "CREATED", "COMPLETED"];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]): string => `${cells.map((c, i) => c.padEnd(widths[i]!)).join("  ").trimEnd()}\n`;
  process.stdout.write(line(head) + rows.map(line).join(""));
  process.stderr.write(`${page.jobs.length} of ${page.total} job(s)${page.next_cursor === null ? "" : `; next page: aitbc jobs ${again} --cursor ${page.next_cursor}`}\n`);
}
