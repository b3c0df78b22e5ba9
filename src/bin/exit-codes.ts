import { CommanderError } from "commander";
import { ApiError } from "../client/api-error.js";
import { terminalLine } from "../client/terminal-text.js";
import { AppError, toAppError } from "../common/errors.js";

/**
 * The exit codes of every `aitbc` command, one table. Small numbers say how the work ended (a
 * script branches on them); 64 and up are sysexits(3) codes for "could not run as asked";
 * 130 and 143 are 128 + the signal. The same table is in `--help` and in the README.
 */
export const EXIT = {
  /** Success; with --wait: the job completed. */
  ok: 0,
  /** With --wait: the job failed, timed out or expired; doctor: a check failed or one it needs could not run; any other failure. */
  failed: 1,
  /** With --wait: the job was cancelled. */
  cancelled: 2,
  /** The coordinator refused the request (an API error, problem+json). */
  refused: 3,
  /** Usage: unknown command or option, a missing or bad argument, flags that do not go together (EX_USAGE). */
  usage: 64,
  /** The coordinator cannot be reached (EX_UNAVAILABLE). */
  unavailable: 69,
  /** A config file, client config or key file is missing, unreadable or invalid (EX_CONFIG). */
  config: 78,
  /** Ctrl-C (SIGINT): jobs stops following (the job keeps running); a service's second Ctrl-C exits without draining. */
  interrupted: 130,
  /** A service's second SIGTERM: it exits without draining. */
  terminated: 143,
} as const;

export const EXIT_CODES_HELP = `
Exit codes (every aitbc command):
  0    success; with --wait: the job completed
  1    with --wait: the job failed, timed out or expired; doctor: a check failed
       or one it needs could not run; any other failure
  2    with --wait: the job was cancelled
  3    the coordinator refused the request (API error: detail, code, HTTP status)
  64   usage error: unknown command or option, bad argument, conflicting flags
  69   the coordinator cannot be reached
  78   bad configuration: config file, client config or key file
  130  Ctrl-C (jobs: stopped following, the job keeps running)
  143  a second SIGTERM stopped a service without draining`;

/** A mistake in how the command was called: exit 64, with a hint to the command's --help. */
export class UsageError extends AppError {
  constructor(message: string, details?: Record<string, unknown>) {
    super("usage", message, { status: 400, details });
  }
}

/** The exit code for whatever a command threw (see {@link EXIT}). */
export function exitCodeOf(err: unknown): number {
  if (err instanceof CommanderError) return err.exitCode === 0 ? EXIT.ok : EXIT.usage;
  if (err instanceof UsageError) return EXIT.usage;
  if (err instanceof ApiError) return err.status === 0 ? EXIT.unavailable : EXIT.refused;
  if (err instanceof AppError && err.code === "config_invalid") return EXIT.config;
  return EXIT.failed;
}

/** The one line a user sees for an error, never a stack trace; text from elsewhere cannot drive the terminal. */
export function describeError(err: unknown): string {
  return terminalLine(err instanceof ApiError ? err.oneLine() : toAppError(err).message);
}
