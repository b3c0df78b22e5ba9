import type { Command } from "commander";
import type { Logger } from "../../common/logger.js";
import { SystemdNotifier } from "../../common/systemd-notify.js";
import { logFormatFlag } from "../global-options.js";

/**
 * `aitbc coordinator --config config/coordinator.toml`: the coordinator (client REST API, miner
 * gateway, scheduler). SIGTERM/SIGINT stop it in order (miners are told to drain; leases stay in
 * the store so they resume after a restart); a second signal exits at once.
 */
export function registerCoordinatorCommand(program: Command): void {
  program
    .command("coordinator")
    .description("run the coordinator: client REST API, miner gateway and scheduler")
    .option("-c, --config <file>", "coordinator config file", "config/coordinator.toml")
    .option("--host <host>", "listen address (overrides [server] host)")
    .option("--port <port>", "listen port, 0 for any (overrides [server] port)", (v) => Number.parseInt(v, 10))
    .option("--data-dir <dir>", "data directory (overrides [storage] data_dir)")
    .option("--log-level <level>", "fatal|error|warn|info|debug|trace (overrides [log] level)")
    .action(async (opts: { config: string; host?: string; port?: number; dataDir?: string; logLevel?: string }, cmd: Command) => {
      // Loaded here, not at the top: `aitbc coordinator --help` and its usage errors need none of it.
      const [{ createLogger }, { loadCoordinatorConfig }, { Coordinator }] = await Promise.all([
        import("../../common/logger.js"),
        import("../../coordinator/config.js"),
        import("../../coordinator/coordinator.js"),
      ]);
      const config = loadCoordinatorConfig(opts.config, {
        optional: cmd.getOptionValueSource("config") !== "cli",
        overrides: {
          "server.host": opts.host,
          "server.port": opts.port,
          "storage.data_dir": opts.dataDir,
          "log.level": opts.logLevel,
          "log.format": logFormatFlag(cmd),
        },
      });
      const log = createLogger({ level: config.logLevel, format: config.logFormat, name: "coordinator" });
      const coordinator = new Coordinator({ config, log });
      // SIGHUP re-reads the file (and environment) and applies what can change while running.
      const onHup = (): void => {
        try {
          const next = loadCoordinatorConfig(opts.config, {
            optional: cmd.getOptionValueSource("config") !== "cli",
            overrides: { "server.host": opts.host, "server.port": opts.port, "storage.data_dir": opts.dataDir, "log.level": opts.logLevel },
          });
          coordinator.reload(next);
        } catch (err) {
          log.error({ err: err instanceof Error ? err.message : String(err) }, "config reload refused; keeping the running config");
        }
      };
      process.on("SIGHUP", onHup);
      await runUntilSignal(coordinator, log, async () => {
        const queued = await coordinator.store.countQueued({});
        return `${await coordinator.gateway.connectedMiners()} miners connected, ${queued} jobs queued, listening on ${coordinator.url}`;
      });
    });
}

/**
 * Starts, then waits for SIGTERM/SIGINT and stops; a second signal exits at once. Under
 * systemd (Type=notify) it sends READY=1 once started, a STATUS line every STATUS_EVERY_MS,
 * WATCHDOG=1 pings when the unit sets WatchdogSec, and STOPPING=1 on the signal.
 */
const STATUS_EVERY_MS = 10_000;

export async function runUntilSignal(
  service: { start(): Promise<unknown>; stop(): Promise<void> },
  log: Logger,
  status?: () => Promise<string>,
): Promise<void> {
  const systemd = new SystemdNotifier(log);
  let statusTimer: NodeJS.Timeout | undefined;
  let signals = 0;
  let resolveStop: () => void = () => undefined;
  const stopped = new Promise<void>((resolve) => (resolveStop = resolve));
  const onSignal = (signal: NodeJS.Signals): void => {
    signals += 1;
    if (signals > 1) {
      log.warn({ signal }, "second signal: exiting now");
      process.exit(signal === "SIGINT" ? 130 : 143);
    }
    log.info({ signal }, "signal: stopping");
    if (statusTimer !== undefined) clearInterval(statusTimer);
    void systemd.stopping();
    void service.stop().then(resolveStop, resolveStop);
  };
  process.on("SIGTERM", onSignal);
  process.on("SIGINT", onSignal);
  try {
    await service.start();
  } catch (err) {
    process.off("SIGTERM", onSignal);
    process.off("SIGINT", onSignal);
    throw err;
  }
  if (systemd.enabled) {
    const line = async (): Promise<string> => (status === undefined ? "running" : status().catch(() => "running"));
    await systemd.ready(await line());
    systemd.startWatchdog();
    statusTimer = setInterval(() => void line().then((text) => systemd.status(text)), STATUS_EVERY_MS);
    statusTimer.unref();
  }
  await stopped;
  process.off("SIGTERM", onSignal);
  process.off("SIGINT", onSignal);
  log.info("stopped");
  log.flush();
}
