import { readFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { Type, type Static } from "@sinclair/typebox";
import { Value } from "@sinclair/typebox/value";
import { parse as parseToml } from "smol-toml";
import { ConfigError, errorMessage } from "../common/errors.js";

/** `~/.config/aitbc/client.toml` (or --client-config FILE): where a client finds its coordinator. */
export const ClientFileSchema = Type.Object(
  {
    /** Base URL of the coordinator. Default "http://127.0.0.1:8080". */
    url: Type.Optional(Type.String({ minLength: 1, pattern: "^https?://" })),
    /** A client API key (aitbc_ck_…). Default: the key `aitbc up` wrote to data/local-client.key. */
    key: Type.Optional(Type.String({ minLength: 1 })),
  },
  { additionalProperties: false },
);
export type ClientFile = Static<typeof ClientFileSchema>;

export const DEFAULT_URL = "http://127.0.0.1:8080";
/** Written by `aitbc up` into its data dir (relative to where it runs). */
export const LOCAL_KEY_FILE = path.join("data", "local-client.key");

export type SettingSource = "flag" | "env" | "config" | "default";

export interface ClientSettingsInput {
  url?: string | undefined;
  key?: string | undefined;
  keyFile?: string | undefined;
  /** --client-config: must exist when given. */
  clientConfig?: string | undefined;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
}

export interface ClientSettings {
  url: string;
  key: string;
  sources: { url: SettingSource; key: SettingSource };
  /** The config file that was read, if any. */
  configFile: string | undefined;
}

/** `$XDG_CONFIG_HOME/aitbc/client.toml`, else `~/.config/aitbc/client.toml`. */
export function defaultClientConfigPath(env: NodeJS.ProcessEnv = process.env): string {
  const base = env.XDG_CONFIG_HOME !== undefined && env.XDG_CONFIG_HOME !== "" ? env.XDG_CONFIG_HOME : path.join(env.HOME ?? os.homedir(), ".config");
  return path.join(base, "aitbc", "client.toml");
}

function readKeyFile(file: string, what: string): string {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (err) {
    throw new ConfigError(`cannot read the key file ${file} (${what}): ${errorMessage(err)}`, { file });
  }
  const key = text.trim();
  if (key === "") throw new ConfigError(`the key file ${file} (${what}) is empty`, { file });
  return key;
}

function readClientFile(file: string, required: boolean): ClientFile | undefined {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (err) {
    if (!required && (err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw new ConfigError(`cannot read the client config ${file}: ${errorMessage(err)}`, { file });
  }
  let raw: unknown;
  try {
    raw = parseToml(text);
  } catch (err) {
    throw new ConfigError(`${file}: not valid TOML: ${errorMessage(err).split("\n")[0] ?? ""}`, { file });
  }
  if (!Value.Check(ClientFileSchema, raw)) {
    const e = Value.Errors(ClientFileSchema, raw).First();
    const key = e === undefined ? "" : e.path.replace(/^\//, "");
    throw new ConfigError(`${file}: ${key === "" ? "" : `key "${key}" `}${e?.message ?? "is invalid"} (allowed keys: url, key)`, { file, key });
  }
  return raw;
}

/**
 * Where the CLI sends requests and with which key, each decided on its own:
 * flag (--url, --key or --key-file) > environment (AITBC_URL, AITBC_KEY) > client config file
 * > defaults (http://127.0.0.1:8080 and data/local-client.key, so `aitbc up` in one terminal
 * and `aitbc jobs …` in another, in the same directory, just work).
 */
export function resolveClientSettings(input: ClientSettingsInput): ClientSettings {
  const env = input.env ?? process.env;
  const cwd = input.cwd ?? process.cwd();
  const configFile = input.clientConfig !== undefined ? path.resolve(cwd, input.clientConfig) : defaultClientConfigPath(env);
  // Read lazily: a flag or env var for both settings makes a broken default file harmless.
  let fileCache: { value: ClientFile | undefined } | undefined;
  const file = (): ClientFile | undefined => {
    fileCache ??= { value: readClientFile(configFile, input.clientConfig !== undefined) };
    return fileCache.value;
  };
  const nonEmpty = (v: string | undefined): v is string => v !== undefined && v !== "";

  let url: string;
  let urlSource: SettingSource;
  if (nonEmpty(input.url)) [url, urlSource] = [input.url, "flag"];
  else if (nonEmpty(env.AITBC_URL)) [url, urlSource] = [env.AITBC_URL, "env"];
  else if (file()?.url !== undefined) [url, urlSource] = [file()!.url!, "config"];
  else [url, urlSource] = [DEFAULT_URL, "default"];
  if (!/^https?:\/\/[^/]/.test(url)) throw new ConfigError(`the coordinator URL must start with http:// or https:// (got "${url}" from ${urlSource})`, { key: "url" });

  let key: string;
  let keySource: SettingSource;
  if (nonEmpty(input.key)) [key, keySource] = [input.key, "flag"];
  else if (nonEmpty(input.keyFile)) [key, keySource] = [readKeyFile(path.resolve(cwd, input.keyFile), "--key-file"), "flag"];
  else if (nonEmpty(env.AITBC_KEY)) [key, keySource] = [env.AITBC_KEY, "env"];
  else if (file()?.key !== undefined) [key, keySource] = [file()!.key!, "config"];
  else {
    const local = path.resolve(cwd, LOCAL_KEY_FILE);
    try {
      key = readFileSync(local, "utf8").trim();
    } catch {
      key = "";
    }
    if (key === "") {
      throw new ConfigError(
        `no API key: pass --key or --key-file, set AITBC_KEY, put key = "…" in ${configFile}, or run \`aitbc up\` in this directory (it writes ${LOCAL_KEY_FILE})`,
        { key: "key" },
      );
    }
    keySource = "default";
  }
  return { url, key, sources: { url: urlSource, key: keySource }, configFile: fileCache?.value === undefined ? undefined : configFile };
}
