import type { Command } from "commander";

/** Option parsers shared by several commands. */

/** A repeatable list flag: `--flag a,b --flag c` → ["a", "b", "c"] (blanks dropped). */
export function collectList(value: string, all: string[] | undefined): string[] {
  return [...(all ?? []), ...value.split(",").map((v) => v.trim()).filter((v) => v !== "")];
}

/** The flags that say which coordinator to talk to and with which key (`aitbc jobs`, `aitbc admin`). */
export interface ConnectionOptions {
  url?: string;
  key?: string;
  keyFile?: string;
  clientConfig?: string;
}

/**
 * Adds --url, --key, --key-file and --client-config; the settings resolve as client-settings.ts
 * says (flag > AITBC_URL/AITBC_KEY > client.toml > defaults). `key` names the kind of key.
 */
export function withConnectionOptions(cmd: Command, key: { what: string; fallback: string }): Command {
  return cmd
    .option("--url <url>", "coordinator URL (else AITBC_URL, client.toml, http://127.0.0.1:8080)")
    .option("--key <key>", `${key.what} (else ${key.fallback})`)
    .option("--key-file <file>", `read the ${key.what} from this file (relative to the working directory)`)
    .option("--client-config <file>", "client config TOML (url, key); default ~/.config/aitbc/client.toml");
}
