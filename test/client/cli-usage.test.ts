import { execFileSync, spawnSync } from "node:child_process";
import { mkdirSync, readdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { Command } from "commander";
import { afterEach, beforeAll, describe, expect, it } from "vitest";
import { COMMAND_SUMMARIES } from "../../src/bin/command-summaries.js";
import { EXIT } from "../../src/bin/exit-codes.js";
import { aitbc, assertBuilt, CLI, cleanup, tempDir } from "./cli-harness.js";

/**
 * The CLI as a whole: the top-level help lists every command without loading it (so its lines
 * must be the modules' own descriptions), one exit-code table in every --help, usage errors as
 * one line and a hint, shell completion scripts, and --json lists of one shape.
 */
const COMMANDS_DIR = path.join(import.meta.dirname, "..", "..", "src", "bin", "commands");
const commandNames = readdirSync(COMMANDS_DIR)
  .filter((f) => f.endsWith(".ts"))
  .map((f) => f.replace(/\.ts$/, ""));

beforeAll(() => assertBuilt());
afterEach(cleanup);

describe("aitbc (the CLI as a whole)", { timeout: 120_000 }, () => {
  it("each top-level summary is the description its command module registers", async () => {
    for (const [name, summary] of Object.entries(COMMAND_SUMMARIES)) {
      const mod = (await import(path.join(COMMANDS_DIR, `${name}.ts`))) as Record<string, unknown>;
      const register = Object.entries(mod).find(([k, v]) => k.startsWith("register") && typeof v === "function")?.[1] as (p: Command) => void;
      const program = new Command();
      register(program);
      expect(program.commands.find((c) => c.name() === name)?.description(), name).toBe(summary);
    }
  });

  it("--version and --help answer; help lists every command and the exit codes", async () => {
    const cwd = tempDir("aitbc-cwd-");
    const version = await aitbc(["--version"], { cwd });
    expect(version.code).toBe(0);
    expect(version.stdout).toMatch(/^\d+\.\d+\.\d+\n$/);
    const help = await aitbc(["--help"], { cwd });
    expect(help.code).toBe(0);
    for (const name of commandNames) expect(help.stdout).toMatch(new RegExp(`^  ${name} `, "m"));
    expect(help.stdout).toContain("Exit codes (every aitbc command):");
    // One table: the codes the help lists are the ones exit-codes.ts defines.
    const listed = [...help.stdout.slice(help.stdout.indexOf("Exit codes")).matchAll(/^ {2}(\d+) /gm)].map((m) => Number(m[1]));
    expect(listed).toEqual(Object.values(EXIT));
    const sub = await aitbc(["keys", "list", "--help"], { cwd });
    expect(sub.stdout).toContain("Exit codes (every aitbc command):");
  });

  it("help X shows that command's help; output cut short by a closed pipe ends quietly", () => {
    const r = spawnSync("bash", ["-c", `'${process.execPath}' '${CLI}' help jobs | head -1; echo "exit \${PIPESTATUS[0]}"`], { encoding: "utf8" });
    expect(r.stdout).toBe("Usage: aitbc jobs [options] [command]\nexit 0\n");
    expect(r.stderr).toBe("");
  });

  it("a usage error is one line and a hint to the command's --help, exit 64", async () => {
    const cwd = tempDir("aitbc-cwd-");
    const unknownOption = await aitbc(["models", "list", "--colour"], { cwd });
    expect(unknownOption.code).toBe(EXIT.usage);
    expect(unknownOption.stderr).toBe("aitbc: unknown option '--colour'\n(see aitbc models list --help)\n");
    expect(unknownOption.stdout).toBe("");
    const unknownCommand = await aitbc(["jbos"], { cwd });
    expect(unknownCommand.code).toBe(EXIT.usage);
    expect(unknownCommand.stderr).toMatch(/^aitbc: unknown command 'jbos'\n\(Did you mean jobs\?\)\n\(see aitbc --help\)\n$/);
    // Thrown by a command's own check (not commander's): the same shape.
    const kind = await aitbc(["keys", "create", "--name", "x", "--miner", "--operator"], { cwd });
    expect(kind.code).toBe(EXIT.usage);
    expect(kind.stderr).toBe("aitbc: --miner and --operator are different kinds of key: choose one\n(see aitbc keys create --help)\n");
    for (const r of [unknownOption, unknownCommand, kind]) expect(r.stderr).not.toContain("Usage:");
  });

  it("completion bash: a script bash accepts that completes commands, subcommands and choices", async () => {
    const cwd = tempDir("aitbc-cwd-");
    const r = await aitbc(["completion", "bash"], { cwd });
    expect(r.code, r.stderr).toBe(0);
    const file = path.join(cwd, "aitbc.bash");
    writeFileSync(file, r.stdout);
    expect(spawnSync("bash", ["-n", file]).status).toBe(0);
    const complete = (...words: string[]): string[] =>
      execFileSync("bash", ["-c", `source '${file}'; COMP_WORDS=(${words.map((w) => `'${w}'`).join(" ")}); COMP_CWORD=${words.length - 1}; _aitbc; printf '%s\\n' "\${COMPREPLY[@]}"`], {
        encoding: "utf8",
      })
        .split("\n")
        .filter((l) => l !== "");
    expect(complete("aitbc", "")).toEqual(expect.arrayContaining(commandNames));
    expect(complete("aitbc", "jobs", "s")).toEqual(["submit", "status"]);
    expect(complete("aitbc", "jobs", "submit", "--input-f")).toEqual(["--input-file"]);
    expect(complete("aitbc", "jobs", "submit", "--priority", "")).toEqual(["low", "normal", "high"]);
    expect(complete("aitbc", "completion", "")).toEqual(expect.arrayContaining(["bash", "zsh"]));
    // After a flag that takes a file, nothing: bash falls back to file names (complete -o default).
    expect(complete("aitbc", "jobs", "submit", "--input-file", "")).toEqual([]);
  });

  it("completion zsh: a compdef script with every command and its description", async () => {
    const cwd = tempDir("aitbc-cwd-");
    const r = await aitbc(["completion", "zsh"], { cwd });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^#compdef aitbc\n/);
    for (const [name, summary] of Object.entries(COMMAND_SUMMARIES)) expect(r.stdout).toContain(`'${name}:${summary}'`);
    expect(r.stdout).toContain("'submit:");
    const zsh = spawnSync("zsh", ["-n"], { input: r.stdout });
    if (zsh.error === undefined) expect(zsh.status, zsh.stderr.toString()).toBe(0);
    const fish = await aitbc(["completion", "fish"], { cwd });
    expect(fish.code).toBe(EXIT.usage);
  });

  it("keys list --json and models list --json: one JSON array each, snake_case keys", async () => {
    const cwd = tempDir("aitbc-cwd-");
    const dataDir = path.join(cwd, "data");
    const created = await aitbc(["keys", "create", "--name", "alice", "--data-dir", dataDir], { cwd });
    expect(created.code, created.stderr).toBe(0);
    mkdirSync(path.join(cwd, "models", "broken"), { recursive: true });
    const keys = await aitbc(["keys", "list", "--json", "--data-dir", dataDir], { cwd });
    const models = await aitbc(["models", "list", "--json", "--models-dir", path.join(cwd, "models")], { cwd });
    for (const r of [keys, models]) {
      expect(r.code, r.stderr).toBe(0);
      const rows = JSON.parse(r.stdout) as Record<string, unknown>[];
      expect(Array.isArray(rows)).toBe(true);
      expect(rows).toHaveLength(1);
      for (const key of Object.keys(rows[0]!)) expect(key).toMatch(/^[a-z]+(_[a-z]+)*$/);
    }
    expect(Object.keys((JSON.parse(keys.stdout) as object[])[0]!)).toEqual(["id", "kind", "name", "tenant", "created_at", "revoked_at"]);
    expect(JSON.parse(models.stdout)).toEqual([{ name: "broken", parameters: null, weights: null, size_bytes: null, layout: expect.stringMatching(/^invalid: /) as unknown }]);
  });
});
