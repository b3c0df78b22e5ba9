import { spawn, spawnSync } from "node:child_process";
import { afterEach, beforeAll, describe, expect, it } from "vitest";
import { ApiClient } from "../../src/client/api-client.js";
import { assertBuilt, claim, CLI, cleanup, run, startCoordinator } from "./cli-harness.js";

/**
 * Ctrl-C on a real terminal: `script` gives `aitbc jobs wait` a pseudo-terminal, and a ^C
 * (byte 0x03) typed into it is what a person's keypress is: the terminal echoes "^C" where the
 * cursor is and sends SIGINT. The message that follows must start a line of its own.
 */
const hasScript = spawnSync("script", ["--version"]).status === 0;

beforeAll(() => assertBuilt());
afterEach(cleanup);

/** The terminal's output as lines, colour and cursor sequences (CSI, save/restore) removed. */
function screenLines(raw: string): string[] {
  return raw.replace(/\u001b(\[[0-9;?]*[A-Za-z]|[78])/g, "").split(/\r?\n/);
}

async function ctrlC(args: string[], ready: RegExp): Promise<{ code: number | null; lines: string[] }> {
  const command = [process.execPath, CLI, ...args].map((a) => `'${a}'`).join(" ");
  const child = spawn("script", ["-qefc", command, "/dev/null"], { stdio: ["pipe", "pipe", "pipe"] });
  let out = "";
  child.stdout.on("data", (d: Buffer) => (out += d.toString()));
  const closed = new Promise<number | null>((resolve) => child.on("close", resolve));
  const deadline = Date.now() + 20_000;
  while (!ready.test(out)) {
    if (Date.now() > deadline || child.exitCode !== null) throw new Error(`never saw ${ready}: ${JSON.stringify(out)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  child.stdin.write("\u0003");
  const code = await closed;
  return { code, lines: screenLines(out) };
}

describe.skipIf(!hasScript)("Ctrl-C on a terminal", { timeout: 60_000 }, () => {
  it("with the progress bar showing: ^C stays on the bar's line, the message starts the next one; exit 130", async () => {
    const s = await startCoordinator();
    const { job_id } = await new ApiClient({ url: s.url, key: s.key }).submitJob({ model: "tiny-gpt2", input: "Hi", parameters: { max_new_tokens: 300 } });
    const ref = await claim(s.coordinator, job_id);
    await run(s.coordinator, ref);
    const publish = setInterval(
      () => s.coordinator.context.events.publishProgress({ jobId: job_id, attempt: ref.attempt, progress: 40, tokens: 120, maxTokens: 300, tokensPerSecond: 250, at: Date.now() }),
      100,
    );
    try {
      const { code, lines } = await ctrlC(["jobs", "wait", job_id, "--url", s.url, "--key", s.key], /tok\/s/);
      expect(code).toBe(130);
      const at = lines.findIndex((l) => l.includes("stopped following"));
      expect(at, JSON.stringify(lines)).toBeGreaterThan(0);
      expect(lines[at]).toMatch(/^stopped following job_/);
      // The line before is the bar, ended by the echoed ^C: no blank line, no ^C on the message's line.
      expect(lines[at - 1]).toMatch(/tok\/s.*\^C$/);
    } finally {
      clearInterval(publish);
    }
  });

  it("while queued (no bar): the echoed ^C and the message are on lines of their own", async () => {
    const s = await startCoordinator();
    const { job_id } = await new ApiClient({ url: s.url, key: s.key }).submitJob({ model: "tiny-gpt2", input: "Hi" });
    const { code, lines } = await ctrlC(["jobs", "wait", job_id, "--url", s.url, "--key", s.key], /queued/);
    expect(code).toBe(130);
    const at = lines.findIndex((l) => l.includes("stopped following"));
    expect(lines.slice(at - 2, at + 1)).toEqual([expect.stringMatching(/^queued/), "^C", expect.stringMatching(/^stopped following job_/)]);
  });
});
