import { execFile } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, utimesSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";

const SCRIPT = path.resolve("scripts/build-if-stale.mjs");

/** `--check` on a project folder: exit 0 and "fresh", or exit 1 and "stale: <why>". */
function check(root: string): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [SCRIPT, "--check", "--root", root], (err, stdout) => {
      resolve({ code: err === null ? 0 : typeof err.code === "number" ? err.code : -1, out: stdout.trim() });
    });
  });
}

/** Sets a file's or folder's mtime to `s` seconds after the epoch (dates, not waiting). */
function at(file: string, s: number): void {
  utimesSync(file, s, s);
}

/** A project whose sources, folders and config files all date from t = 1000 s. */
function project(): string {
  const root = mkdtempSync(path.join(tmpdir(), "aitbc-stale-"));
  mkdirSync(path.join(root, "src", "sub"), { recursive: true });
  mkdirSync(path.join(root, "dist", "bin"), { recursive: true });
  writeFileSync(path.join(root, "src", "a.ts"), "export const a = 1;\n");
  writeFileSync(path.join(root, "src", "sub", "b.ts"), "export const b = 2;\n");
  for (const f of ["tsconfig.json", "tsconfig.build.json", "package.json"]) writeFileSync(path.join(root, f), "{}\n");
  for (const f of ["src/a.ts", "src/sub/b.ts", "src/sub", "src", "tsconfig.json", "tsconfig.build.json", "package.json"]) at(path.join(root, f), 1000);
  return root;
}

describe("scripts/build-if-stale.mjs (npm start's prestart)", () => {
  it("builds when dist/bin/aitbc.js is missing", async () => {
    const root = project();
    expect(await check(root)).toEqual({ code: 1, out: `stale: ${path.join("dist", "bin", "aitbc.js")} is missing` });
  });

  it("without a stamp, compares against dist/bin/aitbc.js (postinstall's build)", async () => {
    const root = project();
    writeFileSync(path.join(root, "dist", "bin", "aitbc.js"), "");
    at(path.join(root, "dist", "bin", "aitbc.js"), 2000);
    expect(await check(root)).toEqual({ code: 0, out: "fresh" });
    at(path.join(root, "src", "sub", "b.ts"), 3000);
    expect(await check(root)).toEqual({ code: 1, out: `stale: ${path.join("src", "sub", "b.ts")} is newer than the last build` });
  });

  it("with a stamp, compares against the stamp: a newer output file does not hide a newer source", async () => {
    const root = project();
    writeFileSync(path.join(root, "dist", "bin", "aitbc.js"), "");
    writeFileSync(path.join(root, "dist", ".build-stamp"), "");
    at(path.join(root, "dist", ".build-stamp"), 4000);
    at(path.join(root, "dist", "bin", "aitbc.js"), 9000);
    expect(await check(root)).toEqual({ code: 0, out: "fresh" });
    at(path.join(root, "src", "a.ts"), 5000);
    expect(await check(root)).toEqual({ code: 1, out: `stale: ${path.join("src", "a.ts")} is newer than the last build` });
  });

  it("a changed config file or a removed source counts as a change", async () => {
    const root = project();
    writeFileSync(path.join(root, "dist", "bin", "aitbc.js"), "");
    at(path.join(root, "dist", "bin", "aitbc.js"), 2000);
    at(path.join(root, "tsconfig.build.json"), 2500);
    expect(await check(root)).toEqual({ code: 1, out: "stale: tsconfig.build.json is newer than the last build" });
    at(path.join(root, "tsconfig.build.json"), 1000);
    expect((await check(root)).code).toBe(0);
    // Removing a file dates its folder now, long after t = 2000 s.
    rmSync(path.join(root, "src", "sub", "b.ts"));
    expect(await check(root)).toEqual({ code: 1, out: `stale: ${path.join("src", "sub")} is newer than the last build` });
  });
});
