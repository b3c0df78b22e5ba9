/**
 * `[log] format` and `--log-format`: "pretty" (one readable line per record), "json" (one JSON
 * object per line, for journald, files and log shippers), or "auto": pretty when the stream is a
 * terminal, JSON otherwise. Its own module so the CLI can list the choices without loading pino.
 */
export const LOG_FORMATS = ["auto", "json", "pretty"] as const;
export type LogFormat = (typeof LOG_FORMATS)[number];
