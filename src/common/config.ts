import { readFileSync } from "node:fs";
import { parse as parseToml } from "smol-toml";
import type { TObject, TSchema, Static } from "@sinclair/typebox";
import { Kind, Type } from "@sinclair/typebox";
import { ValueErrorType } from "@sinclair/typebox/errors";
import { Value } from "@sinclair/typebox/value";
import { didYouMean } from "./did-you-mean.js";
import { parseDuration, parseSize } from "./duration.js";
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
export interface LoadConfigOptions<T = unknown> {
  /** Path of the TOML file; missing is allowed only when `optional` is set. */
  file?: string | undefined;
  optional?: boolean;
  /** e.g. "COORDINATOR" for AITBC_COORDINATOR_… variables. */
  envPrefix: string;
  env?: NodeJS.ProcessEnv;
  /** Dotted key path → value, from command-line flags. */
  overrides?: Record<string, unknown>;
  /**
   * Rules between keys (a lease TTL longer than the heartbeat …), run on the merged config with
   * `usable(keys…)` saying which keys are valid on their own; a check skips keys that are not.
   */
  crossChecks?: (raw: T, usable: (...keys: string[]) => boolean) => ConfigProblem[];
}

export interface LoadedConfig<T> {
  config: T;
  /** Where each key that is set (file, environment or flag) came from, whatever its value. */
  sources: Record<string, "file" | "env" | "flag">;
  /** Keys whose value differs from the default, and where it came from (for `config check`). */
  overridden: Record<string, "file" | "env" | "flag">;
  /** Keys that are set to their default value (a file restating it changes nothing). */
  restated: string[];
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

/** One thing wrong with a config: the dotted key, what is wrong, and a likely fix. */
export interface ConfigProblem {
  /** Dotted key path, e.g. "scheduler.lease_ttl"; "(file)" for the file itself. */
  key: string;
  message: string;
  /** The known key a misspelt one most likely meant. */
  suggestion?: string;
  /** Where a bad value came from when not the file: the environment variable(s), or "a flag". */
  from?: string;
  /** The other keys a cross-key problem is about (their sources join `from`). */
  related?: string[];
}

/** A duration field ("500ms", "10s", "5m", "1h", "1d", or milliseconds); checked by the loader. */
export const Duration = (def: string, description: string) =>
  Type.Union([Type.String(), Type.Number({ minimum: 0 })], { default: def, description, unit: "duration" });
/** A size field ("512KiB", "1MiB", "2GB", or bytes); checked by the loader. */
export const Size = (def: string, description: string) =>
  Type.Union([Type.String(), Type.Integer({ minimum: 0 })], { default: def, description, unit: "size" });

const UNIT_PARSERS: Record<string, (v: string | number) => number> = { duration: parseDuration, size: parseSize };

/** One line per problem, as `config check` and a service's start print them. */
export function formatProblem(p: ConfigProblem): string {
  return `${p.key}: ${p.message}${p.suggestion === undefined ? "" : ` (did you mean "${p.suggestion}"?)`}${p.from === undefined ? "" : ` (from ${p.from})`}`;
}

/** Every problem in one error: the file, then one line per problem. */
export function configError(file: string | undefined, problems: ConfigProblem[]): ConfigError {
  const where = file ?? "config";
  const head = problems.length === 1 ? "invalid config" : `invalid config (${problems.length} problems)`;
  return new ConfigError(`${where}: ${head}:\n  ${problems.map(formatProblem).join("\n  ")}`, {
    file: where,
    problems,
    ...(problems.length === 1 ? { key: problems[0]!.key } : {}),
  });
}

/** Keys present in the value that its schema does not know, each with the nearest known one. */
function unknownKeys(schema: TSchema, value: unknown, path: string[]): ConfigProblem[] {
  const kind = schema[Kind] as string | undefined;
  if (kind === "Object" && isObject(value)) {
    const props = (schema as TObject).properties;
    const known = Object.keys(props);
    return Object.entries(value).flatMap(([k, v]) => {
      const sub = props[k];
      if (sub !== undefined) return unknownKeys(sub, v, [...path, k]);
      if ((schema as TObject).additionalProperties !== false) return [];
      const suggestion = didYouMean(k, known);
      const what = path.length === 0 ? (isObject(v) ? "unknown section" : "unknown key (keys belong in a [section])") : "unknown key";
      return [{ key: [...path, k].join("."), message: what, ...(suggestion === undefined ? {} : { suggestion: [...path, suggestion].join(".") }) }];
    });
  }
  if (kind === "Record" && isObject(value)) {
    const inner = Object.values((schema as { patternProperties?: Record<string, TSchema> }).patternProperties ?? {})[0];
    return inner === undefined ? [] : Object.entries(value).flatMap(([k, v]) => unknownKeys(inner, v, [...path, k]));
  }
  if (kind === "Array" && Array.isArray(value)) {
    const items = (schema as { items?: TSchema }).items;
    return items === undefined ? [] : value.flatMap((v, i) => unknownKeys(items, v, [...path.slice(0, -1), `${path.at(-1) ?? ""}[${i}]`]));
  }
  return [];
}

/** A schema error in words a person can act on (TypeBox says only "Expected union value" for a union). */
function describe(schema: TSchema, message: string, value: unknown): string {
  const not = `, not ${JSON.stringify(value)}`;
  const unit = (schema as { unit?: string }).unit;
  if (unit === "duration") return `expected a duration such as "500ms", "10s", "5m", "1h" or a number of milliseconds${not}`;
  if (unit === "size") return `expected a size such as "512KiB", "1MiB", "2GB" or a number of bytes${not}`;
  const anyOf = (schema as { anyOf?: TSchema[] }).anyOf;
  if (schema[Kind] === "Union" && anyOf !== undefined && anyOf.every((s) => s[Kind] === "Literal")) {
    return `expected one of ${anyOf.map((s) => JSON.stringify((s as { const?: unknown }).const)).join(", ")}${not}`;
  }
  return typeof value === "object" ? message : `${message}${not}`;
}

function valueAt(obj: unknown, path: string[]): unknown {
  let cur = obj;
  for (const k of path) cur = isObject(cur) ? cur[k] : undefined;
  return cur;
}

/** Values compared as the service would use them: "1MiB" and 1048576 are the same size. */
function sameValue(schema: TSchema, a: unknown, b: unknown): boolean {
  const parse = UNIT_PARSERS[(schema as { unit?: string }).unit ?? ""];
  if (parse !== undefined) {
    try {
      return parse(a as string | number) === parse(b as string | number);
    } catch {
      return false;
    }
  }
  return JSON.stringify(a) === JSON.stringify(b);
}

/**
 * Loads, merges and validates. Every problem is reported at once, in one ConfigError: unknown
 * keys and sections (with the nearest known key), values the schema refuses, durations and sizes
 * that do not parse, and the `crossChecks` of keys that only make sense together (run on the
 * keys that are valid on their own, so a bad value is not also reported as a bad combination).
 */
export function loadConfig<S extends TObject>(schema: S, options: LoadConfigOptions<Static<S>>): LoadedConfig<Static<S>> {
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
        throw new ConfigError(`cannot read config file ${file}: ${errorMessage(err)}`, { file, problems: [{ key: "(file)", message: `cannot read: ${errorMessage(err)}` }] });
      }
    }
    if (text !== undefined) {
      try {
        fromFile = parseToml(text);
      } catch (err) {
        throw new ConfigError(`${file}: not valid TOML: ${errorMessage(err)}`, { file, problems: [{ key: "(file)", message: `not valid TOML: ${errorMessage(err)}` }] });
      }
      for (const leaf of leafPaths(schema)) {
        if (valueAt(fromFile, leaf.path) !== undefined) sources[leaf.path.join(".")] = "file";
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
  const from = (key: string): Pick<ConfigProblem, "from"> => {
    const src = sources[key];
    return src === "env" ? { from: envName(options.envPrefix, key.split(".")) } : src === "flag" ? { from: "a flag" } : {};
  };
  const problems: ConfigProblem[] = unknownKeys(schema, merged, []);
  const bad = new Set<string>();
  for (const e of Value.Errors(schema, merged)) {
    if (e.type === ValueErrorType.ObjectAdditionalProperties) continue;
    const key = e.path.replace(/^\//, "").replaceAll("/", ".") || "(root)";
    if (bad.has(key)) continue;
    bad.add(key);
    problems.push({ key, message: describe(e.schema, e.message, e.value), ...from(key) });
  }
  const leaves = leafPaths(schema);
  for (const leaf of leaves) {
    const key = leaf.path.join(".");
    const parse = UNIT_PARSERS[(leaf.schema as { unit?: string }).unit ?? ""];
    if (parse === undefined || bad.has(key)) continue;
    try {
      parse(valueAt(merged, leaf.path) as string | number);
    } catch (err) {
      bad.add(key);
      problems.push({ key, message: errorMessage(err), ...from(key) });
    }
  }
  for (const p of problems) bad.add(p.key);
  if (options.crossChecks !== undefined) {
    // A key is usable when neither it nor a section above it (an unknown key inside) has a problem of its own.
    const usable = (...keys: string[]): boolean =>
      keys.every((k) => k.split(".").every((_, i, parts) => !bad.has(parts.slice(0, i + 1).join("."))));
    for (const p of options.crossChecks(merged, usable)) {
      const froms = [p.key, ...(p.related ?? [])].map((k) => from(k).from).filter((f): f is string => f !== undefined);
      problems.push({ ...p, ...(froms.length === 0 ? {} : { from: [...new Set(froms)].join(", ") }) });
    }
  }
  if (problems.length > 0) throw configError(file, problems.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0)));

  const defaults = Value.Default(schema, {}) as Json;
  const overridden: Record<string, "file" | "env" | "flag"> = {};
  const restated: string[] = [];
  for (const leaf of leaves) {
    const key = leaf.path.join(".");
    const src = sources[key];
    if (src === undefined) continue;
    if (sameValue(leaf.schema, valueAt(merged, leaf.path), valueAt(defaults, leaf.path))) restated.push(key);
    else overridden[key] = src;
  }
  return { config: merged, sources, overridden, restated, file };
}

/** Runs a compile step and reports its failure as a ConfigError naming the key. */
export function compileField<T>(file: string | undefined, key: string, fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    throw new ConfigError(`${file ?? "config"}: ${key}: ${errorMessage(err)}`, { file, key });
  }
}
