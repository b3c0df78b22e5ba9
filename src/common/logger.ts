import { fstatSync } from "node:fs";
import { isatty } from "node:tty";
import { pino, destination, type DestinationStream, type Logger, type LoggerOptions } from "pino";
import type { LogFormat } from "./log-format.js";

export type { Logger } from "pino";

export type LogLevel = "fatal" | "error" | "warn" | "info" | "debug" | "trace" | "silent";

export { LOG_FORMATS, type LogFormat } from "./log-format.js";

/**
 * A request URL as logs may show it: the path, and the names of its query parameters without
 * their values (a client may put a key in a query string; it must never reach a log).
 */
export function redactUrl(url: string): string {
  const q = url.indexOf("?");
  if (q < 0) return url;
  const names = url
    .slice(q + 1)
    .split("&")
    .filter((p) => p !== "")
    .map((p) => `${p.split("=")[0]!.slice(0, 64)}=[redacted]`);
  return `${url.slice(0, q)}?${names.join("&")}`;
}

interface LoggedRequest {
  method?: string;
  url?: string;
  hostname?: string;
  ip?: string;
  socket?: { remotePort?: number };
}

/**
 * The process's logger. Records below warn go to `destination` (stdout, or stderr for CLI
 * commands whose stdout is their output); warn and above always go to stderr, so a shell or a
 * supervisor can tell them apart, and under systemd each line carries its syslog priority.
 * `format` "auto" writes pretty lines when that stream is a terminal and JSON otherwise (a pipe,
 * a file, journald). Keys, prompts and outputs are never logged; the redact list is a second
 * line of defence.
 */
export function createLogger(options: { level?: LogLevel; name?: string; destination?: 1 | 2; format?: LogFormat } = {}): Logger {
  const opts: LoggerOptions = {
    level: options.level ?? "info",
    redact: {
      paths: ["req.headers.authorization", "headers.authorization", "key", "apiKey", "prompt", "input", "output"],
      censor: "[redacted]",
    },
    // Fastify's request logs: its own fields, the URL without query values.
    serializers: {
      req: (req: LoggedRequest) => ({
        method: req.method,
        url: redactUrl(req.url ?? ""),
        host: req.hostname,
        remoteAddress: req.ip,
        remotePort: req.socket?.remotePort,
      }),
    },
    ...(options.name === undefined ? {} : { name: options.name }),
  };
  return pino(opts, new LogSink(options.destination ?? 1, options.format ?? "auto"));
}

/** What "auto" means for a file descriptor: pretty on a terminal, JSON elsewhere. */
export function resolveLogFormat(format: LogFormat, fd: number): "json" | "pretty" {
  if (format !== "auto") return format;
  return isatty(fd) ? "pretty" : "json";
}

const WARN = 40;

/**
 * pino's destination: routes each line by its level (pino sets `lastLevel` on streams that ask
 * for metadata) to the low or the warn stream, formats it when that stream is pretty, and gives
 * it a syslog priority prefix when that stream is the journal.
 */
class LogSink implements DestinationStream {
  /** Set by pino before each write, because the constructor marks this stream as wanting metadata. */
  lastLevel = 0;
  private readonly low: Output;
  private readonly high: Output;

  constructor(fd: 1 | 2, format: LogFormat) {
    Object.defineProperty(this, Symbol.for("pino.metadata"), { value: true });
    this.high = output(2, format);
    this.low = fd === 2 ? this.high : output(fd, format);
  }

  write(line: string): void {
    const out = this.lastLevel >= WARN ? this.high : this.low;
    const text = out.pretty === undefined ? line : out.pretty(line);
    out.stream.write(out.journal ? `<${syslogPriority(this.lastLevel)}>${text}` : text);
  }

  flush(cb: (err?: Error) => void): void {
    this.low.stream.flush((err) => {
      if (err || this.high === this.low) return cb(err ?? undefined);
      this.high.stream.flush((e) => cb(e ?? undefined));
    });
  }

  flushSync(): void {
    this.low.stream.flushSync();
    if (this.high !== this.low) this.high.stream.flushSync();
  }
}

interface Output {
  stream: ReturnType<typeof destination>;
  pretty: ((line: string) => string) | undefined;
  /** Connected to journald: lines carry a `<N>` priority prefix, which journald strips and keeps. */
  journal: boolean;
}

function output(fd: 1 | 2, format: LogFormat): Output {
  const pretty = resolveLogFormat(format, fd) === "pretty";
  // Colour only on a terminal, and never when NO_COLOR is set (https://no-color.org).
  const colour = pretty && isatty(fd) && (process.env.NO_COLOR ?? "") === "";
  // A terminal is written synchronously, so its lines keep their order across stdout and stderr.
  return { stream: destination({ fd, sync: isatty(fd) }), pretty: pretty ? (line) => prettyLine(line, colour) : undefined, journal: isJournal(fd) };
}

/**
 * Whether `fd` is the journal stream systemd connected the service to: systemd sets
 * JOURNAL_STREAM to that stream's "device:inode" (systemd.exec(5)). journald files every line
 * of a service as info whichever stream it came on, unless the line starts with a `<N>` prefix.
 */
export function isJournal(fd: number, env: NodeJS.ProcessEnv = process.env): boolean {
  const want = env.JOURNAL_STREAM;
  if (want === undefined || want === "") return false;
  try {
    const st = fstatSync(fd);
    return want === `${st.dev}:${st.ino}`;
  } catch {
    return false;
  }
}

/** pino level → syslog priority (sd-daemon.h): fatal 2 (crit), error 3, warn 4, info 6, debug and trace 7. */
export function syslogPriority(level: number): number {
  if (level >= 60) return 2;
  if (level >= 50) return 3;
  if (level >= 40) return 4;
  if (level >= 30) return 6;
  return 7;
}

const LEVELS: Record<number, { label: string; colour: string }> = {
  10: { label: "TRACE", colour: "\u001b[90m" },
  20: { label: "DEBUG", colour: "\u001b[36m" },
  30: { label: "INFO ", colour: "\u001b[32m" },
  40: { label: "WARN ", colour: "\u001b[33m" },
  50: { label: "ERROR", colour: "\u001b[31m" },
  60: { label: "FATAL", colour: "\u001b[35m" },
};
const RESET = "\u001b[0m";
const DIM = "\u001b[2m";
/** pino's own fields, shown in the line's head or left out (pid and hostname are journald's). */
const HEAD_FIELDS = new Set(["level", "time", "msg", "name", "pid", "hostname", "v"]);

/**
 * One pino JSON record as `HH:MM:SS.mmm LEVEL name: message key=value …` (local time), an
 * error's stack on the lines below. A line that is not a JSON object is passed through.
 */
export function prettyLine(line: string, colour = false): string {
  let rec: Record<string, unknown>;
  try {
    const parsed: unknown = JSON.parse(line);
    if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) return line;
    rec = parsed as Record<string, unknown>;
  } catch {
    return line;
  }
  const level = LEVELS[typeof rec.level === "number" ? rec.level : 30] ?? { label: String(rec.level), colour: "" };
  const t = new Date(typeof rec.time === "number" ? rec.time : Date.now());
  const pad = (n: number, w = 2): string => String(n).padStart(w, "0");
  const time = `${pad(t.getHours())}:${pad(t.getMinutes())}:${pad(t.getSeconds())}.${pad(t.getMilliseconds(), 3)}`;
  const name = typeof rec.name === "string" ? `${rec.name}: ` : "";
  const msg = typeof rec.msg === "string" ? rec.msg : "";
  const fields: string[] = [];
  let stack = "";
  for (const [k, v] of Object.entries(rec)) {
    if (HEAD_FIELDS.has(k) || v === undefined) continue;
    if (k === "err" && typeof v === "object" && v !== null && typeof (v as { stack?: unknown }).stack === "string") {
      stack = (v as { stack: string }).stack;
      const m = (v as { message?: unknown }).message;
      fields.push(`err=${fieldValue(typeof m === "string" ? m : "")}`);
      continue;
    }
    fields.push(`${k}=${fieldValue(v)}`);
  }
  const tail = fields.length === 0 ? "" : ` ${colour ? DIM : ""}${fields.join(" ")}${colour ? RESET : ""}`;
  const lvl = colour ? `${level.colour}${level.label}${RESET}` : level.label;
  const body = `${colour ? DIM : ""}${time}${colour ? RESET : ""} ${lvl} ${name}${msg}${tail}\n`;
  return stack === "" ? body : `${body}    ${stack.split("\n").join("\n    ")}\n`;
}

/** A field's value: plain when it is one word, else as JSON (quoted, escaped). */
function fieldValue(v: unknown): string {
  if (typeof v === "string") return /^[\w.:/@+-]+$/.test(v) ? v : JSON.stringify(v);
  if (typeof v === "number" || typeof v === "boolean" || v === null) return String(v);
  return JSON.stringify(v);
}

/** A logger that writes nothing: for tests and library use. */
export function silentLogger(): Logger {
  return pino({ level: "silent" });
}
