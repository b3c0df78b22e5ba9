#!/usr/bin/env node
import { Command, CommanderError } from "commander";
import { AppError, toAppError } from "../common/errors.js";
import { packageVersion } from "../common/package-info.js";
import { registerConfigCommand } from "./commands/config.js";
import { registerCoordinatorCommand } from "./commands/coordinator.js";
import { registerDoctorCommand } from "./commands/doctor.js";
import { registerGenerateCommand } from "./commands/generate.js";
import { registerGpusCommand } from "./commands/gpus.js";
import { registerJobsCommand } from "./commands/jobs.js";
import { registerKeysCommand } from "./commands/keys.js";
import { registerMinerCommand } from "./commands/miner.js";
import { registerModelsCommand } from "./commands/models.js";
import { registerUpCommand } from "./commands/up.js";

/**
 * The one CLI binary. Each subcommand lives in `src/bin/commands/<name>.ts` and exports a
 * `register…` function; this file only wires them up and turns failures into a one-line
 * message and an exit code (never a stack trace for a user's mistake).
 */
const program = new Command()
  .name("aitbc")
  .description("aitbc-miner: a GPU miner network (coordinator, miner daemon, client CLI)")
  .version(packageVersion())
  .showHelpAfterError()
  .exitOverride();

const registrations: ((p: Command) => void)[] = [registerConfigCommand, registerCoordinatorCommand, registerDoctorCommand, registerGenerateCommand, registerGpusCommand, registerJobsCommand, registerKeysCommand, registerMinerCommand, registerModelsCommand, registerUpCommand];
// Subcommands register here (keep alphabetical).
for (const register of registrations) register(program);

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
