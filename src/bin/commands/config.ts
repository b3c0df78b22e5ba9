import { readFileSync } from "node:fs";
import path from "node:path";
import type { Command } from "commander";
import { parse as parseToml } from "smol-toml";
import { envName, formatProblem, loadConfig, type ConfigProblem, type LoadedConfig } from "../../common/config.js";
import { ConfigError, errorMessage } from "../../common/errors.js";
import { CoordinatorConfigSchema, compileCoordinatorConfig, coordinatorCrossChecks } from "../../coordinator/config.js";
import { MinerConfigSchema, compileMinerConfig, minerCrossChecks } from "../../miner/config.js";

type Kind = "coordinator" | "miner";

/** Exit status for a config that cannot be used, as at a service's start (sysexits EX_CONFIG). */
const EX_CONFIG = 78;

/** Replaces secrets with "***" wherever they appear, by key name. */
function mask(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(mask);
  if (typeof value === "object" && value !== null) {
    return Object.fromEntries(
      Object.entries(value).map(([k, v]) => [k, isSecret(k) && typeof v === "string" && v !== "" ? "***" : mask(v)]),
    );
  }
  // A password inside a URL (postgres://user:password@host/db).
  if (typeof value === "string") return value.replace(/^([a-z][a-z0-9+.-]*:\/\/[^:/@]*:)[^@/]+@/i, "$1***@");
  return value;
}

function isSecret(key: string): boolean {
  return /^(key|secret|password|token|credentials?)$|secret|password/i.test(key);
}

/** The kind from the file name, else from the sections it has (a [scheduler] is a coordinator's, a [gpus] a miner's). */
function guessKind(file: string): Kind | undefined {
  const base = path.basename(file).toLowerCase();
  if (base.includes("coordinator")) return "coordinator";
  if (base.includes("miner")) return "miner";
  let sections: string[];
  try {
    sections = Object.keys(parseToml(readFileSync(file, "utf8")));
  } catch {
    return undefined;
  }
  const own = (schema: { properties: object }) => sections.filter((s) => Object.hasOwn(schema.properties, s) && !(s === "log")).length;
  const c = own(CoordinatorConfigSchema);
  const m = own(MinerConfigSchema);
  return c > m ? "coordinator" : m > c ? "miner" : undefined;
}

function valueAt(obj: unknown, dotted: string): unknown {
  let cur = obj;
  for (const k of dotted.split(".")) cur = typeof cur === "object" && cur !== null ? (cur as Record<string, unknown>)[k] : undefined;
  return cur;
}

function load(kind: Kind, file: string): LoadedConfig<unknown> {
  if (kind === "coordinator") {
    const loaded = loadConfig(CoordinatorConfigSchema, { file, envPrefix: "COORDINATOR", crossChecks: coordinatorCrossChecks });
    compileCoordinatorConfig(loaded.config, file);
    return loaded;
  }
  const loaded = loadConfig(MinerConfigSchema, { file, envPrefix: "MINER", crossChecks: minerCrossChecks });
  compileMinerConfig(loaded.config, file);
  return loaded;
}

function humanValid(file: string, kind: Kind, loaded: LoadedConfig<unknown>): string {
  const masked = mask(loaded.config);
  const keys = Object.entries(loaded.overridden);
  const lines = [`${file}: valid ${kind} config`];
  if (keys.length === 0) lines.push("  no key differs from its default");
  else {
    lines.push(`  ${keys.length} key${keys.length === 1 ? "" : "s"} differ${keys.length === 1 ? "s" : ""} from the default:`);
    const width = Math.max(...keys.map(([k]) => k.length));
    const prefix = kind === "coordinator" ? "COORDINATOR" : "MINER";
    const where = (k: string, src: "file" | "env" | "flag"): string => (src === "env" ? `env ${envName(prefix, k.split("."))}` : src);
    for (const [k, src] of keys) lines.push(`    ${k.padEnd(width)}  ${JSON.stringify(valueAt(masked, k))}  (${where(k, src)})`);
  }
  if (loaded.restated.length > 0) lines.push(`  ${loaded.restated.length} key${loaded.restated.length === 1 ? "" : "s"} set to the default value (no effect)`);
  lines.push("  (--json prints the whole effective config)");
  return `${lines.join("\n")}\n`;
}

/**
 * `aitbc config check FILE [--kind coordinator|miner] [--json]`: validates a config file the way
 * the service would (defaults < file < environment), reporting every problem at once — unknown
 * keys with the nearest known one, bad values, durations and sizes, keys that contradict each
 * other. It prints the keys that differ from their defaults (a file restating a default changes
 * nothing, so such keys are only counted), or with --json the effective config, secrets masked.
 * Exit status 78 (EX_CONFIG) for a config that cannot be used, a file that cannot be read
 * included, as at a service's start.
 */
export function registerConfigCommand(program: Command): void {
  const config = program.command("config").description("check configuration files");
  config
    .command("check")
    .description("validate a config file: every problem at once, and the keys that differ from their defaults")
    .argument("<file>", "config/coordinator.toml or config/miner.toml")
    .option("--kind <kind>", "coordinator | miner (default: from the file name, else its sections)")
    .option("--json", "print one JSON object on stdout (for scripts), also when the config is invalid")
    .action((file: string, opts: { kind?: string; json?: boolean }) => {
      const json = opts.json === true;
      const fail = (kind: Kind | undefined, problems: ConfigProblem[], message: string): void => {
        if (json) process.stdout.write(`${JSON.stringify({ file, kind: kind ?? null, valid: false, problems }, null, 2)}\n`);
        else process.stderr.write(`${message}\n`);
        process.exitCode = EX_CONFIG;
      };
      if (opts.kind !== undefined && opts.kind !== "coordinator" && opts.kind !== "miner") {
        return fail(undefined, [{ key: "(kind)", message: `--kind must be coordinator or miner, not ${JSON.stringify(opts.kind)}` }], `aitbc: --kind must be coordinator or miner, not ${JSON.stringify(opts.kind)}`);
      }
      const kind = (opts.kind) ?? guessKind(file);
      if (kind === undefined) {
        let message = `cannot tell whether ${file} is a coordinator or a miner config: pass --kind coordinator|miner`;
        try {
          readFileSync(file);
        } catch (err) {
          message = `cannot read config file ${file}: ${errorMessage(err)}`;
        }
        return fail(undefined, [{ key: "(file)", message }], `aitbc: ${message}`);
      }
      let loaded: LoadedConfig<unknown>;
      try {
        loaded = load(kind, file);
      } catch (err) {
        if (!(err instanceof ConfigError)) throw err;
        const problems = (err.details?.problems as ConfigProblem[] | undefined) ?? [{ key: "(config)", message: err.message }];
        const human = problems.some((p) => p.key.startsWith("("))
          ? `aitbc: ${err.message}`
          : `${file}: invalid ${kind} config, ${problems.length} problem${problems.length === 1 ? "" : "s"}:\n${problems.map((p) => `  ${formatProblem(p)}`).join("\n")}`;
        return fail(kind, problems, human);
      }
      if (json) {
        process.stdout.write(
          `${JSON.stringify({ file, kind, valid: true, config: mask(loaded.config), overridden: loaded.overridden, restated: loaded.restated }, null, 2)}\n`,
        );
      } else {
        process.stdout.write(humanValid(file, kind, loaded));
      }
    });
}
