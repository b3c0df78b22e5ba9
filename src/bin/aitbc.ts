#!/usr/bin/env node
import { Command, CommanderError, Option } from "commander";
import { AppError, toAppError } from "../common/errors.js";
import { LOG_FORMATS } from "../common/log-format.js";
import { packageVersion } from "../common/package-info.js";
/**
 * The one CLI binary. Each subcommand lives in `src/bin/commands/<name>.ts` and exports a
 * `register…` function; this file only wires them up and turns failures into a one-line
 * message and an exit code (never a stack trace for a user's mistake).
 *
 * Command modules are loaded on demand: `aitbc jobs …` does not pay for loading onnxruntime,
 * fastify and the miner. Only the top-level help loads them all (to list them).
 */
type Register = (p: Command) => void;
const COMMANDS: Record<string, () => Promise<Register>> = {
  admin: async () => (await import("./commands/admin.js")).registerAdminCommand,
  config: async () => (await import("./commands/config.js")).registerConfigCommand,
  coordinator: async () => (await import("./commands/coordinator.js")).registerCoordinatorCommand,
  doctor: async () => (await import("./commands/doctor.js")).registerDoctorCommand,
  generate: async () => (await import("./commands/generate.js")).registerGenerateCommand,
  gpus: async () => (await import("./commands/gpus.js")).registerGpusCommand,
  jobs: async () => (await import("./commands/jobs.js")).registerJobsCommand,
  keys: async () => (await import("./commands/keys.js")).registerKeysCommand,
  miner: async () => (await import("./commands/miner.js")).registerMinerCommand,
  models: async () => (await import("./commands/models.js")).registerModelsCommand,
  up: async () => (await import("./commands/up.js")).registerUpCommand,
};
const program = new Command()
  .name("aitbc")
  .description("aitbc-miner: a GPU miner network (coordinator, miner daemon, client CLI)")
  .version(packageVersion())
  // Global: every command that logs reads it with optsWithGlobals(); it overrides [log] format.
  .addOption(new Option("--log-format <format>", "log lines; auto is pretty on a terminal, JSON otherwise (overrides [log] format)").choices(LOG_FORMATS))
  .showHelpAfterError()
  .exitOverride();

const wanted = process.argv[2];
const names = wanted !== undefined && Object.hasOwn(COMMANDS, wanted) ? [wanted] : Object.keys(COMMANDS);
for (const name of names) (await COMMANDS[name]!())(program);

try {
  await program.parseAsync(process.argv);
} catch (err) {
  if (err instanceof CommanderError) {
    process.exitCode = err.exitCode;
  } else {
    const e = toAppError(err);
    process.stderr.write(`aitbc: ${e.message}\n`);
    if (!(err instanceof AppError) && process.env.AITBC_DEBUG) process.stderr.write(`${String((err as Error).stack)}\n`);
    process.exitCode = e.code === "config_invalid" ? 78 : 1;
  }
}
