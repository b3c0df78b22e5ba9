#!/usr/bin/env node
import { Command, CommanderError, Option } from "commander";
import { AppError } from "../common/errors.js";
import { LOG_FORMATS } from "../common/log-format.js";
import { packageVersion } from "../common/package-info.js";
import { COMMAND_SUMMARIES } from "./command-summaries.js";
import { describeError, EXIT_CODES_HELP, exitCodeOf, UsageError } from "./exit-codes.js";
/**
 * The one CLI binary. Each subcommand lives in `src/bin/commands/<name>.ts` and exports a
 * `register…` function; this file only wires them up and turns failures into a one-line
 * message and an exit code from one table (exit-codes.ts; never a stack trace for a user's mistake).
 *
 * Command modules are loaded on demand: `aitbc jobs …` loads only jobs.ts and what it imports,
 * not onnxruntime, fastify and the miner. `aitbc --help` and `aitbc --version` load none: the
 * top-level help lists each command by its line in command-summaries.ts. Adding a command is one
 * line in COMMANDS (and, so that --help stays fast, its description in COMMAND_SUMMARIES).
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
  completion: async () => (await import("./commands/completion.js")).registerCompletionCommand,
};

const program = new Command()
  .name("aitbc")
  .description("aitbc-miner: a GPU miner network (coordinator, miner daemon, client CLI)")
  .version(packageVersion())
  // Global: every command that logs reads it with optsWithGlobals(); it overrides [log] format.
  .addOption(new Option("--log-format <format>", "log lines; auto is pretty on a terminal, JSON otherwise (overrides [log] format)").choices(LOG_FORMATS))
  .configureOutput({ outputError: (text, write) => write(text.replace(/^error: /, "aitbc: ")) })
  .exitOverride();

// `aitbc … | head` closes the pipe early: stop quietly, as other command-line tools do.
for (const stream of [process.stdout, process.stderr]) {
  stream.on("error", (err: NodeJS.ErrnoException) => {
    if (err.code !== "EPIPE") throw err;
    process.exit(typeof process.exitCode === "number" ? process.exitCode : 0);
  });
}

// The command named on the line, past the global options (`aitbc --log-format json coordinator …`).
const words = process.argv.slice(2);
while (words[0]?.startsWith("--log-format") === true) words.splice(0, words[0].includes("=") ? 1 : 2);
const [first, second] = words;
const known = (name: string | undefined): name is string => name !== undefined && Object.hasOwn(COMMANDS, name);
// `aitbc completion` describes every command, so it loads them all; `aitbc help X` loads X.
const load = new Set(first === "completion" ? Object.keys(COMMANDS) : known(first) ? [first] : first === "help" && known(second) ? [second] : []);
for (const name of Object.keys(COMMANDS)) {
  const summary = COMMAND_SUMMARIES[name];
  if (load.has(name) || summary === undefined) (await COMMANDS[name]!())(program);
  else program.command(name).description(summary);
}
finishCommand(program, "aitbc");

try {
  await program.parseAsync(process.argv);
} catch (err) {
  if (!(err instanceof CommanderError)) {
    process.stderr.write(`aitbc: ${describeError(err)}\n`);
    if (err instanceof UsageError) process.stderr.write(`${usageHint(commandPath(process.argv.slice(2)))}\n`);
    if (!(err instanceof AppError) && process.env.AITBC_DEBUG) process.stderr.write(`${String((err as Error).stack)}\n`);
  }
  process.exitCode = exitCodeOf(err);
}

/** Every command: a usage error prints one line and this hint (not the whole help); --help ends with the exit codes. */
function finishCommand(cmd: Command, path: string): void {
  cmd.showHelpAfterError(usageHint(path)).addHelpText("after", EXIT_CODES_HELP);
  for (const sub of cmd.commands) finishCommand(sub, `${path} ${sub.name()}`);
}

function usageHint(path: string): string {
  return `(see ${path} --help)`;
}

/** "aitbc jobs submit" for `jobs submit --model …`: the commands the arguments name. */
function commandPath(args: string[]): string {
  const names = ["aitbc"];
  let cmd = program;
  for (const arg of args) {
    const sub = cmd.commands.find((c) => c.name() === arg || c.aliases().includes(arg));
    if (sub === undefined) break;
    names.push(arg);
    cmd = sub;
  }
  return names.join(" ");
}
