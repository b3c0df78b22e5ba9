import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { silentLogger } from "../../src/common/logger.js";
import { loadCoordinatorConfig } from "../../src/coordinator/config.js";
import { Coordinator } from "../../src/coordinator/coordinator.js";
import type { LeaseRef } from "../../src/coordinator/store/job-store.js";

/**
 * Shared by the client CLI tests: a real Coordinator on port 0 (real SQLite in a temp dir), a
 * fake miner that drives jobs through the store's miner-side verbs (what the gateway does), and
 * `node dist/bin/aitbc.js jobs …` as real child processes (run `npm run build` first).
 */
export const CLI = path.join(import.meta.dirname, "..", "..", "dist", "bin", "aitbc.js");

export function assertBuilt(): void {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run npm run build first`);
}

export interface Started {
  coordinator: Coordinator;
  url: string;
  key: string;
  dir: string;
}

const cleanups: (() => Promise<void> | void)[] = [];

export function tempDir(prefix: string): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), prefix));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

export async function cleanup(): Promise<void> {
  for (const fn of cleanups.splice(0).reverse()) await fn();
}

export async function startCoordinator(): Promise<Started> {
  const dir = tempDir("aitbc-client-");
  const config = loadCoordinatorConfig(undefined, {
    optional: true,
    env: {},
    overrides: {
      "server.port": 0,
      "storage.data_dir": dir,
      "log.level": "silent",
      "limits.requests_per_minute": 100_000,
      "limits.requests_per_hour": 100_000,
    },
  });
  const coordinator = new Coordinator({ config, log: silentLogger() });
  const url = await coordinator.start();
  cleanups.push(() => coordinator.stop());
  const { key } = await coordinator.store.createKey("client", "t", "t", Date.now());
  return { coordinator, url, key, dir };
}

/** A fake miner's lease on the next queued job (the given one, or the test is wrong). */
export async function claim(c: Coordinator, jobId: string): Promise<LeaseRef> {
  const a = await c.store.claimNextJob({ minerId: "m1", gpus: [], models: ["tiny-gpt2"] }, Date.now(), 30_000);
  if (a === null || a.job.id !== jobId) throw new Error(`expected to claim ${jobId}, got ${a?.job.id ?? "nothing"}`);
  return { jobId: a.job.id, attempt: a.attempt, leaseToken: a.leaseToken };
}

export async function run(c: Coordinator, ref: LeaseRef): Promise<void> {
  if (!(await c.store.markRunning(ref, Date.now(), 30_000))) throw new Error("markRunning refused");
}

export async function complete(c: Coordinator, ref: LeaseRef, text: string): Promise<void> {
  const put = await c.context.results.put(ref.jobId, ref.attempt, Buffer.from(text));
  const outcome = await c.store.commitResult(
    ref,
    {
      sha256: put.sha256,
      bytes: put.bytes,
      location: put.location,
      finishReason: "length",
      usage: { prompt_tokens: 1, completion_tokens: 2 },
      tokensPerSecond: 10,
      attempt: ref.attempt,
    },
    Date.now(),
  );
  if (outcome !== "committed") throw new Error(`commitResult: ${outcome}`);
}

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** `aitbc …` as a child process, asynchronous so the in-process coordinator keeps serving. */
export class CliProcess {
  stdout = "";
  stderr = "";
  readonly child: ChildProcess;
  readonly done: Promise<CliResult>;

  constructor(args: string[], options: { env?: NodeJS.ProcessEnv; cwd: string }) {
    this.child = spawn(process.execPath, [CLI, ...args], { cwd: options.cwd, env: options.env ?? cleanEnv(options.cwd), stdio: ["ignore", "pipe", "pipe"] });
    this.child.stdout!.on("data", (d: Buffer) => (this.stdout += d.toString()));
    this.child.stderr!.on("data", (d: Buffer) => (this.stderr += d.toString()));
    this.done = new Promise((resolve) => this.child.on("close", (code) => resolve({ code, stdout: this.stdout, stderr: this.stderr })));
    // A child still following a job holds an event stream open: end it before the coordinator.
    cleanups.push(async () => {
      if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill("SIGKILL");
      await this.done;
    });
  }

  /** Resolves once stderr matches; rejects if the process ends first or after 15 s. */
  async stderrMatches(re: RegExp): Promise<void> {
    const deadline = Date.now() + 15_000;
    while (!re.test(this.stderr)) {
      if (this.child.exitCode !== null) throw new Error(`exited ${this.child.exitCode} before stderr matched ${re}: ${this.stderr}`);
      if (Date.now() > deadline) throw new Error(`stderr never matched ${re}: ${this.stderr}`);
      await new Promise((r) => setTimeout(r, 25));
    }
  }
}

/** The environment a fresh user has: no AITBC_* variables, a HOME with no client config. */
export function cleanEnv(home: string, extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("AITBC_") && k !== "XDG_CONFIG_HOME") env[k] = v;
  return { ...env, HOME: home, ...extra };
}

export function aitbc(args: string[], options: { env?: NodeJS.ProcessEnv; cwd: string }): Promise<CliResult> {
  return new CliProcess(args, options).done;
}
