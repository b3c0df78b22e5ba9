import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { MODELS_DIR } from "../inference/engine-fixture.js";

/** `npm test` builds dist/ first; run `npm run build` before running this file alone. */
const CLI = path.resolve("dist/bin/aitbc.js");

/**
 * onnxruntime's telemetry is also off whenever a CI variable is set (CI, GITHUB_ACTIONS, …), so
 * the child gets none: the test then checks our own switch, in CI as on a laptop.
 */
const CI_VARIABLES = new Set([
  "CI",
  "TF_BUILD",
  "GITHUB_ACTIONS",
  "GITLAB_CI",
  "CIRCLECI",
  "TRAVIS",
  "JENKINS_URL",
  "CODEBUILD_BUILD_ID",
  "BUILDKITE",
  "TEAMCITY_VERSION",
  "APPVEYOR",
  "BITBUCKET_BUILD_NUMBER",
  "SYSTEM_TEAMFOUNDATIONCOLLECTIONURI",
  "ORT_DISABLE_TELEMETRY",
  "ORT_RUNNING_UNIT_TESTS",
]);

describe("onnxruntime telemetry", () => {
  it("a generation leaves no mat-debug-<pid>.log behind (the 1DS SDK's trace file)", async () => {
    const tmp = mkdtempSync(path.join(tmpdir(), "aitbc-ort-tmp-"));
    const env = { ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !CI_VARIABLES.has(k))), TMPDIR: tmp };
    const args = [CLI, "generate", "--model", "tiny-gpt2", "--models-dir", MODELS_DIR, "--prompt", "Hello", "--max-new-tokens", "2", "--execution-provider", "cpu", "--json"];
    const startedAt = Date.now();
    const child = spawn(process.execPath, args, { env, stdio: ["ignore", "pipe", "pipe"] });
    let stderr = "";
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    const code = await new Promise<number | null>((resolve) => child.on("exit", resolve));
    expect(code, stderr).toBe(0);
    // The SDK writes to the system's temp folder; TMPDIR is set too in case it honours that.
    // A file of that name from an older process with the same pid (left before this fix) is not this child's.
    const trace = `/tmp/mat-debug-${child.pid}.log`;
    expect(existsSync(trace) && statSync(trace).mtimeMs >= startedAt - 1000).toBe(false);
    expect(readdirSync(tmp).filter((f) => f.startsWith("mat-debug-"))).toEqual([]);
  });
});
