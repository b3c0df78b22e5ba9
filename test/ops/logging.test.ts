import { spawn, type ChildProcess } from "node:child_process";
import { closeSync, fstatSync, mkdtempSync, openSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterEach, describe, expect, it } from "vitest";

/** `npm test` builds dist/ first; run `npm run build` before running this file alone. */
const CLI = path.resolve("dist/bin/aitbc.js");
const ANSI = /\u001b\[[0-9;]*m/g;
/** A pretty line: local time, padded level, logger name, message. */
const PRETTY = /^\d\d:\d\d:\d\d\.\d{3} (TRACE|DEBUG|INFO |WARN |ERROR|FATAL) coordinator: /;

interface Run {
  child: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  exited: Promise<number | null>;
}

const children: ChildProcess[] = [];
afterEach(() => {
  for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
});

/** Without AITBC_ variables, NO_COLOR or JOURNAL_STREAM from the outer shell, which would change the output. */
function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const outer = Object.entries(process.env).filter(([k]) => !k.startsWith("AITBC_") && k !== "NO_COLOR" && k !== "JOURNAL_STREAM");
  return { ...Object.fromEntries(outer), ...extra };
}

function start(command: string, args: string[], env: NodeJS.ProcessEnv): Run {
  // stdin stays an open pipe: `script` ends its session when its input ends.
  const child = spawn(command, args, { env, stdio: ["pipe", "pipe", "pipe"] });
  children.push(child);
  let out = "";
  let err = "";
  child.stdout.on("data", (d: Buffer) => (out += d.toString()));
  child.stderr.on("data", (d: Buffer) => (err += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  return { child, stdout: () => out, stderr: () => err, exited };
}

function coordinatorArgs(dir: string, extra: string[] = []): string[] {
  const file = path.join(dir, "coordinator.toml");
  writeFileSync(file, '[log]\nlevel = "info"\n');
  return [CLI, ...extra, "coordinator", "-c", file, "--port", "0", "--data-dir", path.join(dir, "data")];
}

/** Runs the coordinator on a pseudo-terminal (util-linux `script`): its stdout and stderr are a TTY. */
function startOnTerminal(dir: string, extra: string[] = []): Run {
  const command = ["exec", process.execPath, ...coordinatorArgs(dir, extra)].map((a) => JSON.stringify(a)).join(" ");
  return start("script", ["-qec", command, "/dev/null"], cleanEnv({ TERM: "xterm" }));
}

async function waitFor<T>(what: string, fn: () => T | undefined, run: Run, ms = 20_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = fn();
    if (v !== undefined) return v;
    if (run.child.exitCode !== null || Date.now() > end) {
      throw new Error(`no ${what}; stdout:\n${run.stdout().slice(-2000)}\nstderr:\n${run.stderr().slice(-2000)}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

function jsonLines(text: string): Record<string, unknown>[] {
  return text
    .split("\n")
    .filter((l) => l.trim() !== "")
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

function plainLines(text: string): string[] {
  return text
    .replace(ANSI, "")
    .split(/\r?\n/)
    .filter((l) => l.trim() !== "");
}

describe("log output of a piped coordinator", () => {
  it("writes JSON lines, info on stdout, warn and above on stderr, and no request lines for probes and scrapes", async () => {
    const dir = mkdtempSync(path.join(tmpdir(), "aitbc-logs-"));
    const args = coordinatorArgs(dir);
    const run = start(process.execPath, args, cleanEnv());
    const url = await waitFor(
      "listening line on stdout",
      () => jsonLines(run.stdout()).find((l) => l.msg === "coordinator listening")?.url as string | undefined,
      run,
    );
    for (const probe of ["/healthz", "/readyz", "/metrics", "/metrics", "/healthz?verbose=1"]) {
      expect((await fetch(`${url}${probe}`)).status).toBeLessThan(500);
    }
    // A route that is not a probe is still logged; its lines come after any the probes wrote.
    expect((await fetch(`${url}/openapi.json`)).status).toBe(200);
    await waitFor("request lines for /openapi.json", () => (run.stdout().includes('"url":"/openapi.json"') ? true : undefined), run);
    const requests = jsonLines(run.stdout()).filter((l) => l.msg === "incoming request");
    expect(requests.map((l) => (l.req as { url: string }).url)).toEqual(["/openapi.json"]);
    expect(jsonLines(run.stdout()).every((l) => typeof l.level === "number" && l.level < 40)).toBe(true);

    // A refused reload is an error: stderr only, as JSON.
    writeFileSync(args[args.indexOf("-c") + 1]!, "[limits]\nrequests_per_minute = -1\n");
    run.child.kill("SIGHUP");
    const refused = await waitFor(
      "refusal on stderr",
      () => jsonLines(run.stderr()).find((l) => l.msg === "config reload refused; keeping the running config"),
      run,
    );
    expect(refused.level).toBe(50);
    expect(run.stdout()).not.toContain("config reload refused");
    run.child.kill("SIGTERM");
    expect(await run.exited).toBe(0);
  });

  it("[log] format's variable makes pretty lines on a pipe, and --log-format outranks it", async () => {
    const env = cleanEnv({ AITBC_COORDINATOR_LOG_FORMAT: "pretty" });
    const pretty = start(process.execPath, coordinatorArgs(mkdtempSync(path.join(tmpdir(), "aitbc-logs-"))), env);
    const line = await waitFor("pretty listening line", () => plainLines(pretty.stdout()).find((l) => l.includes("coordinator listening")), pretty);
    expect(line).toMatch(PRETTY);
    expect(line).toMatch(/ INFO  coordinator: coordinator listening url=http:\/\/127\.0\.0\.1:\d+ /);
    // Not a terminal: no colour codes even when pretty.
    expect(pretty.stdout()).not.toMatch(ANSI);

    const json = start(process.execPath, coordinatorArgs(mkdtempSync(path.join(tmpdir(), "aitbc-logs-")), ["--log-format", "json"]), env);
    await waitFor("JSON listening line", () => jsonLines(json.stdout()).find((l) => l.msg === "coordinator listening"), json);
  });
});

describe("log output to journald", () => {
  it("prefixes each line with its syslog priority when systemd's JOURNAL_STREAM names the stream", async () => {
    const dir = mkdtempSync(path.join(tmpdir(), "aitbc-logs-"));
    const args = coordinatorArgs(dir);
    // One file for stdout and stderr, as systemd passes one journal socket for both.
    const logFile = path.join(dir, "journal.log");
    const fd = openSync(logFile, "w");
    const st = fstatSync(fd);
    const child = spawn(process.execPath, args, { env: cleanEnv({ JOURNAL_STREAM: `${st.dev}:${st.ino}` }), stdio: ["ignore", fd, fd] });
    closeSync(fd);
    children.push(child);
    const run: Run = { child, stdout: () => readFileSync(logFile, "utf8"), stderr: () => "", exited: new Promise((resolve) => child.on("exit", resolve)) };
    const listening = await waitFor("listening line", () => run.stdout().split("\n").find((l) => l.includes('"msg":"coordinator listening"')), run);
    expect(listening).toMatch(/^<6>\{"level":30,/);
    writeFileSync(args[args.indexOf("-c") + 1]!, "[limits]\nrequests_per_minute = -1\n");
    child.kill("SIGHUP");
    const refused = await waitFor("refusal line", () => run.stdout().split("\n").find((l) => l.includes("config reload refused")), run);
    expect(refused).toMatch(/^<3>\{"level":50,/);
    child.kill("SIGTERM");
    expect(await run.exited).toBe(0);
  });
});

describe("log output on a terminal", () => {
  it("is pretty by default: time, level and message, no JSON", async () => {
    const run = startOnTerminal(mkdtempSync(path.join(tmpdir(), "aitbc-logs-")));
    const line = await waitFor("listening line", () => plainLines(run.stdout()).find((l) => l.includes("coordinator listening")), run);
    expect(line).toMatch(PRETTY);
    const lines = plainLines(run.stdout());
    expect(lines.length).toBeGreaterThan(0);
    for (const l of lines) expect(l).toMatch(PRETTY);
    // Levels are coloured on a terminal.
    expect(run.stdout()).toMatch(/\u001b\[32mINFO /);
    // script ends the coordinator (it would take the terminal's hangup for a reload).
    run.child.kill("SIGTERM");
    await run.exited;
  });

  it("--log-format json writes JSON there too", async () => {
    const run = startOnTerminal(mkdtempSync(path.join(tmpdir(), "aitbc-logs-")), ["--log-format", "json"]);
    const listening = await waitFor(
      "JSON listening line",
      () => plainLines(run.stdout()).find((l) => l.startsWith("{") && l.includes('"msg":"coordinator listening"')),
      run,
    );
    expect(JSON.parse(listening)).toMatchObject({ level: 30, name: "coordinator", msg: "coordinator listening" });
    run.child.kill("SIGTERM");
    await run.exited;
  });
});
