import path from "node:path";
import type { Command } from "commander";
import { collectList } from "../cli-options.js";
import { AppError } from "../../common/errors.js";
import { SystemdNotifier } from "../../common/systemd-notify.js";
import type { Miner } from "../../miner/miner.js";
import type { MinerMetrics } from "../../miner/miner-metrics.js";
import { logFormatFlag } from "../global-options.js";

/**
 * `aitbc miner --config config/miner.toml`: the miner daemon. The first SIGTERM/SIGINT drains
 * (no new jobs, running ones get [miner] drain_grace, the rest are handed back); a second one
 * exits at once. Exit code 0 after a clean drain.
 */
export function registerMinerCommand(program: Command): void {
  program
    .command("miner")
    .description("run the miner daemon: detect GPUs, connect to the coordinator, run jobs")
    .option("-c, --config <file>", "miner config file", "config/miner.toml")
    .option(
      "--coordinator <url>",
      "coordinator URL (overrides [coordinator] url); repeat it, or separate with commas, for several replicas",
      collectList,
    )
    .option("--key-file <file>", "file holding the miner key, relative to the working directory (overrides [coordinator] key_file)")
    .option("--models <names>", "model folders to serve (overrides [inference] models); repeat it, or separate with commas", collectList)
    .option("--models-dir <dir>", "folder that holds model folders (overrides [inference] models_dir)")
    .option("--name <name>", "miner name (overrides [miner] name)")
    .option("--cpu", "run as a CPU miner even when GPUs are present")
    .option("--log-level <level>", "fatal|error|warn|info|debug|trace (overrides [log] level)")
    .action(async (opts: MinerCommandOptions, cmd: Command) => {
      // Loaded here, not at the top: `aitbc miner --help` and its usage errors need none of it.
      const [{ createLogger }, { loadMinerConfig }, { minerConcurrency }, { createEngine }, { detectGpus, execRunner, selectedGpus }, miners, metricsModule] = await Promise.all([
        import("../../common/logger.js"),
        import("../../miner/config.js"),
        import("../../miner/default-concurrency.js"),
        import("../../miner/engine-factory.js"),
        import("../../miner/gpu/detect.js"),
        import("../../miner/miner.js"),
        import("../../miner/miner-metrics.js"),
      ]);
      const explicit = cmd.getOptionValueSource("config") === "cli";
      const config = loadMinerConfig({
        file: opts.config,
        optional: !explicit,
        requireKey: true,
        overrides: {
          "coordinator.url": opts.coordinator,
          // A flag's path is relative to the working directory (a path in the file, to the file).
          "coordinator.key_file": opts.keyFile === undefined ? undefined : path.resolve(opts.keyFile),
          "inference.models": opts.models,
          "inference.models_dir": opts.modelsDir,
          "miner.name": opts.name,
          "gpus.mode": opts.cpu === true ? "cpu" : undefined,
          "log.level": opts.logLevel,
          "log.format": logFormatFlag(cmd),
        },
      });
      const log = createLogger({ level: config.logLevel, format: config.logFormat, name: "miner" });
      const detection = await detectGpus({ gpus: config.gpus });
      for (const problem of detection.problems) log.warn({ problem }, "gpu detection");
      const gpus = selectedGpus(detection);
      const concurrency = minerConcurrency(config, gpus);
      log.info({ gpus: gpus.map((g) => `${g.index}:${g.name}`), slots: concurrency.slots, slotsReason: concurrency.reason }, "gpus selected");
      const engine = createEngine(
        config,
        gpus.map((g) => g.index),
        log,
      );
      const metrics: MinerMetrics = new metricsModule.MinerMetrics({
        running: (): number => miner.running,
        ...(gpus.length > 0 ? { nvidiaSmi: { command: config.gpus.nvidiaSmi, runner: execRunner } } : {}),
      });
      const { GpuLoadSampler } = await import("../../miner/gpu/gpu-load.js");
      const gpuLoad =
        gpus.length > 0 ? new GpuLoadSampler({ command: config.gpus.nvidiaSmi, runner: execRunner, indices: gpus.map((g) => g.index), log: log.child({ component: "gpu-load" }) }) : undefined;
      const miner: Miner = new miners.Miner({ config, engine, gpus, log, metrics, concurrency, ...(gpuLoad === undefined ? {} : { gpuLoad }) });
      if (config.metricsListen !== "") await metrics.listen(config.metricsListen, log);

      let signals = 0;
      const onSignal = (signal: NodeJS.Signals): void => {
        signals++;
        if (signals > 1) {
          log.warn({ signal }, "second signal: exiting now");
          process.exit(signal === "SIGINT" ? 130 : 143);
        }
        log.info({ signal }, "signal: draining");
        void miner.stop();
      };
      process.on("SIGTERM", onSignal);
      process.on("SIGINT", onSignal);
      // SIGHUP re-reads the config and applies the log level (the rest needs a restart).
      const onHup = (): void => {
        try {
          const next = loadMinerConfig({ file: opts.config, optional: !explicit, overrides: { "log.level": opts.logLevel } });
          const changed = next.logLevel !== log.level ? ["log.level"] : [];
          log.level = next.logLevel;
          log.info({ changed }, "config reloaded");
        } catch (err) {
          log.error({ err: err instanceof Error ? err.message : String(err) }, "config reload refused; keeping the running config");
        }
      };
      process.on("SIGHUP", onHup);
      // Under systemd: READY=1 once first connected, STATUS lines, watchdog pings, STOPPING=1.
      const systemd = new SystemdNotifier(log);
      const statusLine = (): string =>
        `${gpus.length > 0 ? `${gpus.length} GPU${gpus.length === 1 ? "" : "s"}` : "CPU"}, ${miner.running} job${miner.running === 1 ? "" : "s"} running, ${miner.state}`;
      let announcedReady = false;
      const statusTimer = setInterval(() => void systemd.status(statusLine()), 10_000);
      statusTimer.unref();
      const stopped = new Promise<void>((resolve) => {
        miner.on("state", ({ to }) => {
          if (to === "ready" && !announcedReady) {
            announcedReady = true;
            void systemd.ready(statusLine());
            systemd.startWatchdog();
          } else if (to === "draining") {
            void systemd.stopping();
          }
          if (to === "stopped") {
            clearInterval(statusTimer);
            systemd.stopWatchdog();
            void metrics.close();
            resolve();
          }
        });
      });
      try {
        await miner.start();
      } catch (err) {
        await miner.stop({ graceMs: 0 });
        throw err;
      }
      await stopped;
      process.off("SIGTERM", onSignal);
      process.off("SIGINT", onSignal);
      process.off("SIGHUP", onHup);
      log.info("miner stopped");
      log.flush();
      if (miner.fatalError !== undefined) {
        throw new AppError(miner.fatalError, "the inference engine failed; the miner stopped (see the log)");
      }
    });
}

interface MinerCommandOptions {
  config: string;
  coordinator?: string[];
  keyFile?: string;
  models?: string[];
  modelsDir?: string;
  name?: string;
  cpu?: boolean;
  logLevel?: string;
}
