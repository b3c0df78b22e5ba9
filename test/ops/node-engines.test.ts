import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterEach, describe, expect, it } from "vitest";

const SCRIPT = path.resolve("scripts/check-node-engines.mjs");

function check(root?: string): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [SCRIPT, ...(root === undefined ? [] : ["--root", root])], { encoding: "utf8" });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

interface PackageJson {
  engines: { node: string };
  dependencies: Record<string, string>;
  devDependencies: Record<string, string>;
}

const pkg = JSON.parse(readFileSync("package.json", "utf8")) as PackageJson;
const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

describe("Node versions (README: Supported Node versions)", () => {
  it("every locked package runs on the oldest Node 20 and Node 22 that package.json's engines admits", () => {
    const r = check();
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/run on node 20\.19\.0 and 22\.13\.0 \(engines\.node \^20\.19\.0 \|\| >=22\.13\.0\)/);
  });

  it("names a locked package that needs a newer Node than engines admits (light-my-request's cookie 2 before the override)", () => {
    const root = mkdtempSync(path.join(tmpdir(), "aitbc-engines-"));
    dirs.push(root);
    writeFileSync(path.join(root, "package.json"), JSON.stringify({ engines: { node: pkg.engines.node } }));
    const packages = {
      "": { engines: { node: pkg.engines.node } },
      "node_modules/ws": { version: "8.23.0", engines: { node: ">=10.0.0" } },
      "node_modules/cookie": { version: "2.0.2", engines: { node: ">=22" } },
    };
    writeFileSync(path.join(root, "package-lock.json"), JSON.stringify({ lockfileVersion: 3, packages }));
    const r = check(root);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("node_modules/cookie 2.0.2 needs node >=22, not 20.19.0\n");
    expect(r.stderr).not.toContain("node_modules/ws");
  });

  it("dependencies that have raised their Node floor in a minor or patch release stay on one minor (~ or exact)", () => {
    // @aws-sdk/client-s3: its releases after January 2027 need Node 22. playwright-core went
    // from node >=18 to >=20 in 1.62, pg from >=8 to >=16 in 8.16.1, systeminformation from
    // >=8 to >=10 in 5.32. Everything else has changed its Node floor only in a major.
    const all = { ...pkg.dependencies, ...pkg.devDependencies };
    for (const name of ["@aws-sdk/client-s3", "playwright-core", "pg", "systeminformation"]) {
      expect(all[name], name).toMatch(/^(~|\d)/);
    }
  });
});
