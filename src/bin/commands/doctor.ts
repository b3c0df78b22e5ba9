import path from "node:path";
import type { Command } from "commander";

/**
 * `aitbc doctor`: is this host ready to mine? GPUs seen, the configured models valid, onnxruntime
 * loads on the CPU and (where there is a GPU) with the CUDA provider, naming the missing library
 * when not; the coordinator accepts the miner key; disk space. Exit code 0 when nothing failed
 * and nothing it needs was skipped, 1 otherwise.
 */
export function registerDoctorCommand(program: Command): void {
  program
    .command("doctor")
    .description("check this host: GPUs, CUDA provider, models, coordinator and key, disk")
    .option("--models-dir <dir>", "folder that holds model folders (default: the config's [inference] models_dir)")
    .option("--json", "print JSON instead of text", false)
    .option("-c, --config <file>", "miner config whose models, coordinator and key to check", "config/miner.toml")
    .option("--coordinator <url>", "coordinator URL (overrides the config's)")
    .option("--key-file <file>", "file holding the miner key, relative to the working directory (overrides the config's)")
    .option("--no-coordinator", "check this host only: no coordinator and key check")
    .addHelpText("after", "\nExit 1 when a check failed or one it needs could not run (SKIP: e.g. no miner key; pass --no-coordinator for a host-only check).")
    .action(async (opts: { modelsDir?: string; json: boolean; config: string; coordinator?: string | false; keyFile?: string }, cmd: Command) => {
      const checkCoordinator = opts.coordinator !== false;
      // Loaded here, not at the top: `aitbc doctor --help` and its usage errors need no onnxruntime.
      const [{ loadMinerConfig }, { healthy, runDoctor }] = await Promise.all([import("../../miner/config.js"), import("../doctor-checks.js")]);
      const miner = loadMinerConfig({
        file: opts.config,
        optional: cmd.getOptionValueSource("config") !== "cli",
        overrides: {
          "coordinator.url": typeof opts.coordinator === "string" ? opts.coordinator : undefined,
          // A flag's path is relative to the working directory (a path in the file, to the file).
          "coordinator.key_file": opts.keyFile === undefined ? undefined : path.resolve(opts.keyFile),
        },
      });
      const coordinator = miner.coordinator.key === "" ? undefined : { url: miner.coordinator.url, key: miner.coordinator.key };
      const results = await runDoctor(opts.modelsDir ?? miner.inference.models_dir, coordinator, {
        wanted: miner.inference.models,
        checkCoordinator,
        nvidiaSmi: miner.gpus.nvidiaSmi,
        cudaWanted: miner.gpus.mode !== "cpu" && miner.inference.execution_provider !== "cpu",
      });
      if (opts.json) {
        process.stdout.write(`${JSON.stringify({ healthy: healthy(results), checks: results }, null, 2)}\n`);
      } else {
        for (const r of results) {
          process.stdout.write(`${r.status.toUpperCase().padEnd(4)}  ${r.name.padEnd(16)} ${r.summary}\n`);
          for (const d of r.details ?? []) process.stdout.write(`      ${"".padEnd(16)} ${d}\n`);
        }
      }
      process.exitCode = healthy(results) ? 0 : 1;
    });
}

