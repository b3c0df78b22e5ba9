import type { Command } from "commander";
import type { LogFormat } from "../common/log-format.js";

/** The global `--log-format` flag (aitbc.ts), when given: it overrides `[log] format`. */
export function logFormatFlag(cmd: Command): LogFormat | undefined {
  return cmd.optsWithGlobals<{ logFormat?: LogFormat }>().logFormat;
}
