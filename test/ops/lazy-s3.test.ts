import { spawn, execFile } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

/** `npm test` builds dist/ first; run `npm run build` before running this file alone. */
const CLI = path.resolve("dist/bin/aitbc.js");
const SDK = "@aws-sdk/client-s3";
const MARK = `imported ${SDK}`;

/**
 * A module hook, preloaded with --import, that writes MARK to stderr when anything resolves the
 * AWS SDK's S3 module: whether a process loads it, whatever Node version (the SDK's warning
 * only shows on Node 20).
 */
let hook = "";
let dir = "";
beforeAll(() => {
  dir = mkdtempSync(path.join(tmpdir(), "aitbc-lazy-s3-"));
  const hooks = path.join(dir, "hooks.mjs");
  writeFileSync(
    hooks,
    `import { writeSync } from "node:fs";
export async function resolve(specifier, context, next) {
  if (specifier === ${JSON.stringify(SDK)}) writeSync(2, ${JSON.stringify(`${MARK}\n`)});
  return next(specifier, context);
}
`,
  );
  hook = path.join(dir, "register.mjs");
  writeFileSync(hook, `import { register } from "node:module";\nregister(${JSON.stringify(pathToFileURL(hooks).href)});\n`);
});

let stopChild: (() => void) | undefined;
afterAll(() => stopChild?.());

describe("the AWS SDK is loaded only when S3 is used", () => {
  it("the hook sees the SDK when a process imports it (the check itself works)", async () => {
    const { failed, stderr } = await new Promise<{ failed: boolean; stderr: string }>((resolve) => {
      execFile(process.execPath, ["--import", hook, "--input-type=module", "-e", `await import(${JSON.stringify(SDK)});`], (err, _out, stderr) =>
        resolve({ failed: err !== null, stderr }),
      );
    });
    expect(failed, stderr).toBe(false);
    expect(stderr).toContain(MARK);
  });

  it("a coordinator without S3 starts, serves and stops without importing it or printing its warning", async () => {
    const child = spawn(process.execPath, ["--import", hook, CLI, "coordinator", "--port", "0", "--data-dir", path.join(dir, "data")], {
      env: Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("AITBC_"))),
      stdio: ["ignore", "pipe", "pipe"],
    });
    stopChild = () => child.kill("SIGKILL");
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.on("exit", resolve));
    const url = await new Promise<string>((resolve, reject) => {
      const timer = setInterval(() => {
        const m = /"url":"(http:\/\/[^"]+)"[^\n]*"msg":"coordinator listening"/.exec(stdout);
        if (m !== null) {
          clearInterval(timer);
          resolve(m[1]!);
        } else if (child.exitCode !== null) {
          clearInterval(timer);
          reject(new Error(`coordinator exited:\n${stdout}\n${stderr}`));
        }
      }, 50);
    });
    expect((await fetch(`${url}/readyz`)).status).toBe(200);
    child.kill("SIGTERM");
    expect(await exited).toBe(0);
    expect(stdout).toContain('"msg":"stopped"');
    expect(stderr).not.toContain(MARK);
    expect(stderr).not.toMatch(/AWS SDK|NodeVersionSupportWarning/);
  });
});
