import { existsSync } from "node:fs";
import path from "node:path";
import type { Command } from "commander";
import type { LogLevel } from "../../common/logger.js";
import type { Miner } from "../../miner/miner.js";
import type { Concurrency } from "../../miner/default-concurrency.js";
import { ModelError } from "../../common/errors.js";
import { RECIPES } from "../../inference/models/recipes.js";
import { logFormatFlag } from "../global-options.js";
import { runUntilSignal } from "./coordinator.js";
import { collectList } from "../cli-options.js";

const DEFAULT_MODEL = "tiny-gpt2";

/**
 * `aitbc up` (what `npm start` runs): the coordinator and a local miner in one process, with the
 * bundled tiny-gpt2 (built on first start if missing), on the GPU when one works and on CPU
 * otherwise. Prints the URL, a client key and a ready-to-paste curl. Keys persist in the data
 * dir, so later starts print the same key.
 */
export function registerUpCommand(program: Command): void {
  program
    .command("up")
    .description("run the coordinator and a local miner with tiny-gpt2 (the one-machine setup)")
    .option("--config <file>", "coordinator config file", "config/coordinator.toml")
    .option("--miner-config <file>", "miner config file", "config/miner.toml")
    .option("--port <port>", "listen port, 0 for any", (v) => Number.parseInt(v, 10))
    .option("--data-dir <dir>", "data directory")
    .option("--models-dir <dir>", "models directory", "models")
    .option("--model <name>", `a model folder the local miner serves (repeatable, or comma-separated; default ${DEFAULT_MODEL}); built-in ones are built when missing`, collectList)
    .option("--cpu", "run the local miner on CPU even when a GPU is present")
    .option("--log-level <level>", "fatal|error|warn|info|debug|trace", "warn")
    .action(async (opts: UpOptions, cmd: Command) => {
      // Loaded here, not at the top: `aitbc up --help` and its usage errors need none of it.
      const [{ createLogger }, { loadCoordinatorConfig }, { Coordinator }, localKey, { buildModel }, { loadMinerConfig }, { minerConcurrency }, { createEngine }, detect, miners] = await Promise.all([
        import("../../common/logger.js"),
        import("../../coordinator/config.js"),
        import("../../coordinator/coordinator.js"),
        import("../../coordinator/auth/local-key.js"),
        import("../../inference/models/build-model.js"),
        import("../../miner/config.js"),
        import("../../miner/default-concurrency.js"),
        import("../../miner/engine-factory.js"),
        import("../../miner/gpu/detect.js"),
        import("../../miner/miner.js"),
      ]);
      const config = loadCoordinatorConfig(opts.config, {
        optional: cmd.getOptionValueSource("config") !== "cli",
        overrides: { "server.port": opts.port, "storage.data_dir": opts.dataDir, "log.level": opts.logLevel, "log.format": logFormatFlag(cmd) },
      });
      const log = createLogger({ level: config.logLevel, format: config.logFormat, name: "aitbc" });
      const modelsDir = path.resolve(opts.modelsDir);
      const models = opts.model === undefined || opts.model.length === 0 ? [DEFAULT_MODEL] : [...new Set(opts.model)];
      // Every model is there or built in: refuse one that is neither before building any.
      const missing = models.filter((name) => !existsSync(path.join(modelsDir, name, "config.json")));
      for (const name of missing.filter((n) => RECIPES[n] === undefined)) {
        throw new ModelError("model_not_found", `no model ${name} in ${modelsDir}: build or pull it first (aitbc models pull REPO --name ${name} --models-dir ${opts.modelsDir})`, { name });
      }
      for (const name of missing) {
        const modelDir = path.join(modelsDir, name);
        process.stderr.write(`building ${name} in ${modelDir} …\n`);
        await buildModel(RECIPES[name]!, modelDir);
      }

      const coordinator = new Coordinator({ config, log });
      let miner: Miner | undefined;
      await runUntilSignal(
        {
          start: async () => {
            const url = await coordinator.start();
            const clientKey = await localKey.ensureLocalClientKey(coordinator.store, config.dataDir);
            const minerKey = await localKey.ensureLocalMinerKey(coordinator.store, config.dataDir);
            const minerConfig = loadMinerConfig({
              file: opts.minerConfig,
              optional: cmd.getOptionValueSource("minerConfig") !== "cli",
              overrides: {
                "coordinator.url": url.replace(/^http/, "ws"),
                "coordinator.key": minerKey.key,
                "miner.name": "local",
                "inference.models_dir": modelsDir,
                "inference.models": models,
                "gpus.mode": opts.cpu === true ? "cpu" : undefined,
              },
            });
            const detection = await detect.detectGpus({ gpus: minerConfig.gpus });
            const gpus = detect.selectedGpus(detection);
            const concurrency = minerConcurrency(minerConfig, gpus);
            log.info({ gpus: gpus.map((g) => `${g.index}:${g.name}`), slots: concurrency.slots, slotsReason: concurrency.reason }, "local miner");
            const engine = createEngine(minerConfig, gpus.map((g) => g.index), log);
            miner = new miners.Miner({ config: minerConfig, engine, gpus, log, concurrency });
            await miner.start();
            printBanner(url, clientKey.key, gpus.length, models, concurrency);
          },
          stop: async () => {
            await miner?.stop();
            await coordinator.stop();
          },
        },
        log,
      );
    });
}

function printBanner(url: string, key: string, gpuCount: number, models: string[], concurrency: Concurrency): void {
  const q = (s: string): string => `'${s}'`;
  const lines = [
    "",
    `aitbc is up: coordinator ${url}, local miner with ${models.join(", ")} on ${gpuCount > 0 ? `${gpuCount} GPU(s)` : "CPU"}`,
    `jobs at once: ${concurrency.slots} (${concurrency.reason}); [miner] max_concurrent in --miner-config sets it`,
    `API docs:   ${url}/docs`,
    `client key: ${key}`,
    "",
    "Submit a job:",
    `  curl -s -X POST ${url}/v1/jobs -H ${q(`Authorization: Bearer ${key}`)} -H 'Content-Type: application/json' \\`,
    `    -d '{"model":"${models[0] ?? DEFAULT_MODEL}","input":"The GPU network","parameters":{"max_new_tokens":64,"seed":7}}'`,
    "Follow it (progress as Server-Sent Events), then download the result:",
    `  curl -N ${url}/v1/jobs/JOB_ID/events -H ${q(`Authorization: Bearer ${key}`)}`,
    `  curl -s ${url}/v1/jobs/JOB_ID/download -H ${q(`Authorization: Bearer ${key}`)}`,
    "",
    "Ctrl-C stops both (the miner finishes or hands back its jobs first).",
    "",
  ];
  process.stdout.write(`${lines.join("\n")}\n`);
}

interface UpOptions {
  config: string;
  minerConfig: string;
  port?: number;
  dataDir?: string;
  modelsDir: string;
  model?: string[];
  cpu?: boolean;
  logLevel: LogLevel;
}
