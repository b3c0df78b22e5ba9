import { spawnSync } from "node:child_process";
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";

/**
 * scripts/postinstall.mjs in a scratch package root (its own location decides the root), with
 * a stand-in dist/bin/aitbc.js that records its arguments, so each branch runs for real
 * without touching this checkout's dist/ or models/.
 */
let root: string;

beforeEach(() => {
  root = mkdtempSync(path.join(os.tmpdir(), "aitbc-postinstall-"));
  mkdirSync(path.join(root, "scripts"));
  cpSync(path.resolve("scripts/postinstall.mjs"), path.join(root, "scripts", "postinstall.mjs"));
  writeFileSync(path.join(root, "package.json"), JSON.stringify({ name: "scratch", type: "module" }));
});
afterEach(() => rmSync(root, { recursive: true, force: true }));

function fakeCli(body: string): void {
  mkdirSync(path.join(root, "dist", "bin"), { recursive: true });
  writeFileSync(path.join(root, "dist", "bin", "aitbc.js"), body);
}

function postinstall(): { status: number | null; stderr: string } {
  const r = spawnSync(process.execPath, [path.join(root, "scripts", "postinstall.mjs")], { cwd: root, encoding: "utf8" });
  return { status: r.status, stderr: r.stderr };
}

describe("scripts/postinstall.mjs", () => {
  it("succeeds without typescript or dist/, saying what it skipped", () => {
    const r = postinstall();
    expect(r.status).toBe(0);
    expect(r.stderr).toMatch(/typescript is not installed/);
    expect(r.stderr).toMatch(/dist\/bin\/aitbc\.js is missing/);
  });

  it("builds models/tiny-gpt2 with the compiled CLI when it is missing", () => {
    fakeCli(`import { writeFileSync } from "node:fs"; writeFileSync(${JSON.stringify(path.join(root, "args.json"))}, JSON.stringify(process.argv.slice(2)));`);
    const r = postinstall();
    expect(r.status).toBe(0);
    expect(JSON.parse(readFileSync(path.join(root, "args.json"), "utf8"))).toEqual(["models", "build", "tiny-gpt2", "--models-dir", path.join(root, "models")]);
  });

  it("leaves an existing tiny-gpt2 alone", () => {
    fakeCli(`process.exit(3);`);
    mkdirSync(path.join(root, "models", "tiny-gpt2"), { recursive: true });
    writeFileSync(path.join(root, "models", "tiny-gpt2", "config.json"), "{}");
    const r = postinstall();
    expect(r.status).toBe(0);
    expect(r.stderr).toMatch(/models\/tiny-gpt2 is there/);
  });

  it("fails loudly when the model build fails", () => {
    fakeCli(`process.stderr.write("boom\\n"); process.exit(3);`);
    const r = postinstall();
    expect(r.status).toBe(3);
    expect(r.stderr).toMatch(/building models\/tiny-gpt2 FAILED/);
    expect(existsSync(path.join(root, "models", "tiny-gpt2"))).toBe(false);
  });
});
