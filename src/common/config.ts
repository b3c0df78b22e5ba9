import { readFileSync } from "node:fs";
import { parse as parseToml } from "smol-toml";
import type { TObject, TSchema, Static } from "@sinclair/typebox";
import { Kind } from "@sinclair/typebox";
import { Value } from "@sinclair/typebox/value";
import { ConfigError, errorMessage } from "./errors.js";

/**
 * Config in three steps: a TOML file (raw, snake_case, human units such as "10s") is merged
 * over the schema's defaults, then environment variables, then flags; the result is validated
 * against one TypeBox schema; each program then compiles it into the typed object it runs on.
 *
 * Precedence: defaults < file < environment < flags.
 *
 * Environment variables are derived from the key path: `AITBC_<PREFIX>_<SECTION>_<KEY>`
 * upper-cased, e.g. `[server] port` of the coordinator is `AITBC_COORDINATOR_SERVER_PORT`.
 * Values are parsed as the schema's type (numbers, booleans, JSON for arrays and tables).
 * Flags arrive as dotted paths (`{ "server.port": 0 }`).
 */
export interface LoadConfigOptions {
  /** Path of the TOML file; missing is allowed only when `optional` is set. */
  file?: string | undefined;
  optional?: boolean;
  /** e.g. "COORDINATOR" for AITBC_COORDINATOR_… variables. */
  envPrefix: string;
  env?: NodeJS.ProcessEnv;
  /** Dotted key path → value, from command-line flags. */
  overrides?: Record<string, unknown>;
}

export interface LoadedConfig<T> {
  config: T;
  /** Where each overridden key came from, for `config check` and logs. */
  sources: Record<string, "file" | "env" | "flag">;
  file: string | undefined;
}

type Json = Record<string, unknown>;

function isObject(v: unknown): v is Json {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function setPath(target: Json, path: string[], value: unknown): void {
  let cur = target;
  for (const key of path.slice(0, -1)) {
    const next = cur[key];
    if (!isObject(next)) cur[key] = {};
    cur = cur[key] as Json;
  }
  cur[path[path.length - 1]!] = value;
}

function deepMerge(base: Json, over: Json): Json {
  const out: Json = { ...base };
  for (const [k, v] of Object.entries(over)) {
    const b = out[k];
    out[k] = isObject(b) && isObject(v) ? deepMerge(b, v) : v;
  }
  return out;
}

/** Leaf paths of an object schema (sections are nested objects with fixed properties). */
function leafPaths(schema: TSchema, prefix: string[] = []): { path: string[]; schema: TSchema }[] {
  if (schema[Kind] === "Object" && (schema as TObject).properties) {
    const props = (schema as TObject).properties;
    const keys = Object.keys(props);
    if (keys.length > 0) {
      return keys.flatMap((k) => leafPaths(props[k]!, [...prefix, k]));
    }
  }
  return [{ path: prefix, schema }];
}

function parseEnvValue(raw: string, schema: TSchema): unknown {
  const kind = schema[Kind] as string | undefined;
  if (kind === "Integer" || kind === "Number") {
    const n = Number(raw);
    return Number.isFinite(n) && raw.trim() !== "" ? n : raw;
  }
  if (kind === "Boolean") {
    if (/^(1|true|yes|on)$/i.test(raw)) return true;
    if (/^(0|false|no|off)$/i.test(raw)) return false;
    return raw;
  }
  if (kind === "Array" || kind === "Object" || kind === "Record") {
    try {
      return JSON.parse(raw) as unknown;
    } catch {
      return raw;
    }
  }
  if (kind === "Union") {
    // e.g. a duration that may be a number or a string: keep numbers numeric.
    const n = Number(raw);
    return raw.trim() !== "" && Number.isFinite(n) ? n : raw;
  }
  return raw;
}

export function envName(prefix: string, path: string[]): string {
  return ["AITBC", prefix, ...path].join("_").replace(/[^A-Za-z0-9]/g, "_").toUpperCase();
}

export function loadConfig<S extends TObject>(schema: S, options: LoadConfigOptions): LoadedConfig<Static<S>> {
  const sources: Record<string, "file" | "env" | "flag"> = {};
  let fromFile: Json = {};
  const file = options.file;
  if (file !== undefined) {
    let text: string | undefined;
    try {
      text = readFileSync(file, "utf8");
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (!(options.optional && code === "ENOENT")) {
        throw new ConfigError(`cannot read config file ${file}: ${errorMessage(err)}`, { file });
      }
    }
    if (text !== undefined) {
      try {
        fromFile = parseToml(text);
      } catch (err) {
        throw new ConfigError(`${file}: not valid TOML: ${errorMessage(err)}`, { file });
      }
      for (const leaf of leafPaths(schema)) {
        let cur: unknown = fromFile;
        for (const k of leaf.path) cur = isObject(cur) ? cur[k] : undefined;
        if (cur !== undefined) sources[leaf.path.join(".")] = "file";
      }
    }
  }

  let merged: Json = deepMerge({}, fromFile);
  const env = options.env ?? process.env;
  for (const leaf of leafPaths(schema)) {
    const name = envName(options.envPrefix, leaf.path);
    const raw = env[name];
    if (raw !== undefined) {
      setPath(merged, leaf.path, parseEnvValue(raw, leaf.schema));
      sources[leaf.path.join(".")] = "env";
    }
  }
  for (const [dotted, value] of Object.entries(options.overrides ?? {})) {
    if (value === undefined) continue;
    setPath(merged, dotted.split("."), value);
    sources[dotted] = "flag";
  }

  merged = Value.Default(schema, merged) as Json;
  const errors = [...Value.Errors(schema, merged)];
  if (errors.length > 0) {
    const where = file === undefined ? "config" : file;
    const lines = errors.slice(0, 10).map((e) => {
      const key = e.path.replace(/^\//, "").replaceAll("/", ".") || "(root)";
      const src = sources[key];
      return `${key}: ${e.message}${src === "env" ? ` (from ${envName(options.envPrefix, key.split("."))})` : src === "flag" ? " (from a flag)" : ""}`;
    });
    throw new ConfigError(`${where}: invalid config:\n  ${lines.join("\n  ")}`, {
      file: where,
      errors: errors.map((e) => ({ key: e.path, message: e.message })),
    });
  }
  return { config: merged, sources, file };
}

/** Runs a compile step and reports its failure as a ConfigError naming the key. */
export function compileField<T>(file: string | undefined, key: string, fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    throw new ConfigError(`${file ?? "config"}: ${key}: ${errorMessage(err)}`, { file, key });
  }
}
