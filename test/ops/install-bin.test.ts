import { execFile } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, realpathSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { afterAll, describe, expect, it } from "vitest";
import { ROOT, assertBuilt } from "../e2e/cluster.js";

/**
 * The README's install step puts `aitbc` on the PATH: run exactly that command from this
 * checkout, offline, into a temporary npm prefix, then call `aitbc` through the PATH.
 */
const run = promisify(execFile);
const INSTALL = "npm install -g --ignore-scripts .";
const prefix = mkdtempSync(path.join(tmpdir(), "aitbc-prefix-"));

afterAll(() => rmSync(prefix, { recursive: true, force: true }));

/** The environment with the temp prefix's bin/ first on the PATH and no npm settings inherited from a parent npm. */
function env(): NodeJS.ProcessEnv {
  const out: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!/^npm_/i.test(k)) out[k] = v;
  out.PATH = `${path.join(prefix, "bin")}:${process.env.PATH ?? ""}`;
  return out;
}

describe("aitbc on the PATH (README, Quick start)", () => {
  it(`\`${INSTALL}\` links the checkout's bin into the npm prefix, and \`aitbc\` runs from the PATH`, async () => {
    assertBuilt();
    for (const section of ["## Quick start", "## Install as a service"]) {
      const readme = readFileSync(path.join(ROOT, "README.md"), "utf8");
      const start = readme.indexOf(section);
      const body = readme.slice(start, readme.indexOf("\n## ", start + 1));
      expect(body).toContain(INSTALL);
    }
    mkdirSync(path.join(prefix, "lib"), { recursive: true });
    const [cmd, ...args] = INSTALL.split(" ");
    await run(cmd!, [...args, "--prefix", prefix, "--offline", "--no-audit", "--no-fund"], { cwd: ROOT, env: env(), timeout: 120_000 });

    const bin = path.join(prefix, "bin", "aitbc");
    // A link to this checkout, not a copy: rebuilding dist/ is what `aitbc` runs next.
    expect(realpathSync(bin)).toBe(realpathSync(path.join(ROOT, "dist", "bin", "aitbc.js")));
    const { stdout: found } = await run("bash", ["-c", "command -v aitbc"], { env: env() });
    expect(found.trim()).toBe(bin);
    const version = (JSON.parse(readFileSync(path.join(ROOT, "package.json"), "utf8")) as { version: string }).version;
    // From another directory, as a user's shell would run it.
    const { stdout } = await run("aitbc", ["--version"], { cwd: prefix, env: env() });
    expect(stdout.trim()).toBe(version);
    const { stdout: help } = await run("aitbc", ["keys", "create", "--help"], { cwd: prefix, env: env() });
    expect(help).toContain("--miner");
  }, 150_000);

  it("without installing, `npx aitbc` in the checkout runs the same command", async () => {
    const readme = readFileSync(path.join(ROOT, "README.md"), "utf8");
    expect(readme).toContain("`npx aitbc …` in the checkout");
    const version = (JSON.parse(readFileSync(path.join(ROOT, "package.json"), "utf8")) as { version: string }).version;
    const { stdout } = await run("npx", ["--offline", "aitbc", "--version"], { cwd: ROOT, env: env(), timeout: 60_000 });
    expect(stdout.trim()).toBe(version);
  }, 90_000);
});
