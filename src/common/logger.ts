import { pino, destination, type Logger, type LoggerOptions } from "pino";

export type { Logger } from "pino";

export type LogLevel = "fatal" | "error" | "warn" | "info" | "debug" | "trace" | "silent";

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
    ...(options.name === undefined ? {} : { name: options.name }),
  };
  return pino(opts, destination({ fd: options.destination ?? 1, sync: false }));
}

/** A logger that writes nothing: for tests and library use. */
export function silentLogger(): Logger {
  return pino({ level: "silent" });
}
