import { pino, destination, type Logger, type LoggerOptions } from "pino";

export type { Logger } from "pino";

export type LogLevel = "fatal" | "error" | "warn" | "info" | "debug" | "trace" | "silent";

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
 * Structured JSON logs on stdout (or stderr for CLI commands whose stdout is their output).
 * Keys, prompts and outputs are never logged; the redact list is a second line of defence.
 */
export function createLogger(options: { level?: LogLevel; name?: string; destination?: 1 | 2 } = {}): Logger {
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
  return pino(opts, destination({ fd: options.destination ?? 1, sync: false }));
}

/** A logger that writes nothing: for tests and library use. */
export function silentLogger(): Logger {
  return pino({ level: "silent" });
}
