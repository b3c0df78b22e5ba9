import path from "node:path";
import type { Command } from "commander";
import { UsageError } from "../exit-codes.js";

type Kind = "coordinator" | "miner";

/** Replaces secrets with "***" wherever they appear, by key name. */
function mask(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(mask);
  if (typeof value === "object" && value !== null) {
    return Object.fromEntries(
      Object.entries(value).map(([k, v]) => [k, /^(key|secret|password|token|credentials?)$/i.test(k) && typeof v === "string" && v !== "" ? "***" : mask(v)]),
    );
  }
  return value;
}

function guessKind(file: string): Kind | undefined {
  const base = path.basename(file).toLowerCase();
  if (base.includes("coordinator")) return "coordinator";
  if (base.includes("miner")) return "miner";
  return undefined;
}

/**
 * `aitbc config check FILE [--kind coordinator|miner]`: validates a config file the way the
 * service would (defaults < file < environment) and prints the effective config, secrets
 * masked, with where each overridden key came from. A bad file fails with the key and reason
 * (exit 78, as at a service's start).
 */
export function registerConfigCommand(program: Command): void {
  const config = program.command("config").description("check configuration files");
  config
    .command("check")
    .description("validate a config file and print the effective config (secrets masked)")
    .argument("<file>", "config/coordinator.toml or config/miner.toml")
    .option("--kind <kind>", "coordinator | miner (default: from the file name)")
    .action(async (file: string, opts: { kind?: string }) => {
      const kind = (opts.kind ?? guessKind(file)) as Kind | undefined;
      if (kind !== "coordinator" && kind !== "miner") {
        throw new UsageError(`cannot tell whether ${file} is a coordinator or a miner config: pass --kind coordinator|miner`);
      }
      const [{ loadConfig }, { CoordinatorConfigSchema, compileCoordinatorConfig }, { MinerConfigSchema, compileMinerConfig }] = await Promise.all([
        import("../../common/config.js"),
        import("../../coordinator/config.js"),
        import("../../miner/config.js"),
      ]);
      const effective =
        kind === "coordinator"
          ? (() => {
              const loaded = loadConfig(CoordinatorConfigSchema, { file, envPrefix: "COORDINATOR" });
              compileCoordinatorConfig(loaded.config, file);
              return loaded;
            })()
          : (() => {
              const loaded = loadConfig(MinerConfigSchema, { file, envPrefix: "MINER" });
              compileMinerConfig(loaded.config, file);
              return loaded;
            })();
      process.stdout.write(
        `${JSON.stringify({ file, kind, valid: true, config: mask(effective.config), overridden: effective.sources }, null, 2)}\n`,
      );
    });
}
