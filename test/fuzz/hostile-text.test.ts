import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import path from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CLI, aitbc, assertBuilt, claim, cleanEnv, cleanup, complete, run, startCoordinator, tempDir, type Started } from "../client/cli-harness.js";

/**
 * Text a miner controls (its output, its fail message) must not drive the terminal of the
 * person who reads it with `aitbc jobs …` (issue 13, item 5). On a terminal (a real
 * pseudo-terminal from `script`) control characters are shown escaped; written to a file or a
 * pipe, or with --raw, the result is the exact bytes.
 */
const NASTY = "before \u001b[2J\u001b]0;owned\u0007\u001b[31mred\u009b0m \u202egnirts\r after";

let s: Started;
let done: string;
let failed: string;
let home: string;

beforeAll(async () => {
  assertBuilt();
  s = await startCoordinator();
  home = tempDir("aitbc-home-");
  const submit = async (): Promise<string> => (await s.coordinator.store.createJob(
    {
      tenant: "t",
      model: "tiny-gpt2",
      input: "x",
      inputFileId: null,
      outputFormat: "text",
      destination: "local",
      requirements: {},
      priority: "normal",
      timeoutSeconds: 60,
      parameters: { max_new_tokens: 4, temperature: 0, top_k: 0, top_p: 1, repetition_penalty: 1, stop: [], seed: 1 },
      maxAttempts: 1,
      estimatedCost: 0,
      estimatedTimeSeconds: 1,
    },
    Date.now(),
  )).job.id;
  done = await submit();
  const ref = await claim(s.coordinator, done);
  await run(s.coordinator, ref);
  await complete(s.coordinator, ref, NASTY);
  failed = await submit();
  const ref2 = await claim(s.coordinator, failed);
  expect(await s.coordinator.store.failAttempt(ref2, { code: "engine_error", message: `boom ${NASTY}`, retryable: false }, Date.now(), 1000)).toBe("failed");
});

afterAll(async () => {
  await cleanup();
});

const conn = (): string[] => ["--url", s.url, "--key", s.key];

/** Runs the CLI with stdout on a pseudo-terminal; returns what the terminal received. */
async function onTerminal(args: string[]): Promise<string> {
  const quoted = [process.execPath, CLI, ...args].map((a) => `'${a.replace(/'/g, "'\\''")}'`).join(" ");
  const { stdout } = await promisify(execFile)("script", ["-qec", quoted, "/dev/null"], { cwd: home, env: cleanEnv(home) });
  return stdout;
}

 
const DRIVING = /[\u001b\u0007\u009b\u202e]/u;

describe("untrusted text on a terminal", () => {
  it("jobs download and jobs wait show the output escaped on a terminal, exact in a pipe, a file or with --raw", async () => {
    const tty = await onTerminal(["jobs", "download", done, ...conn()]);
    expect(tty).toContain("before \\x1b[2J\\x1b]0;owned\\x07\\x1b[31mred\\x9b0m \\u202egnirts\\r after");
    expect(tty).not.toMatch(DRIVING);
    const waited = await onTerminal(["jobs", "wait", done, ...conn()]);
    expect(waited).toContain("\\x1b[2J");
    expect(waited).not.toMatch(DRIVING);

    const piped = await aitbc(["jobs", "download", done, ...conn()], { cwd: home, env: cleanEnv(home) });
    expect(piped.stdout).toBe(NASTY);
    const raw = await onTerminal(["jobs", "download", done, "--raw", ...conn()]);
    expect(raw).toContain("\u001b[2J");
    const file = path.join(home, "out.txt");
    expect((await aitbc(["jobs", "download", done, "--output", file, ...conn()], { cwd: home, env: cleanEnv(home) })).code).toBe(0);
    expect(readFileSync(file, "utf8")).toBe(NASTY);
  });

  it("jobs status and jobs wait print a miner's fail message escaped, on a terminal and off it", async () => {
    const status = await aitbc(["jobs", "status", failed, ...conn()], { cwd: home, env: cleanEnv(home) });
    expect(status.stdout).toContain("boom before \\x1b[2J");
    expect(status.stdout).not.toMatch(DRIVING);
    const waited = await aitbc(["jobs", "wait", failed, ...conn()], { cwd: home, env: cleanEnv(home) });
    expect(waited.code).toBe(1);
    expect(waited.stderr).toContain("boom before \\x1b[2J");
    expect(waited.stderr).not.toMatch(DRIVING);
  });
});
