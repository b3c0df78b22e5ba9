import { spawn } from "node:child_process";
import { chmodSync, cpSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { silentLogger } from "../../src/common/logger.js";
import { loadCoordinatorConfig } from "../../src/coordinator/config.js";
import { Coordinator } from "../../src/coordinator/coordinator.js";
import { checkCudaProvider, describeCudaProviderProblem } from "../../src/inference/cuda-provider.js";
import { buildModel } from "../../src/inference/models/build-model.js";
import { RECIPES } from "../../src/inference/models/recipes.js";
import { FakeCoordinator } from "../miner/fake-coordinator.js";

/**
 * Flags of the operator commands, as a person types them: a --key-file is relative to the
 * working directory (not to the -c config's folder), --models / --model pick what a miner
 * serves, and doctor is unhealthy when a check it needs could not run.
 */
const ROOT = path.join(import.meta.dirname, "..", "..");
const CLI = path.join(ROOT, "dist", "bin", "aitbc.js");

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

let dir = "";
/** A built tiny-gpt2, copied into a test's models dir. */
let tinyGpt2 = "";
let env: NodeJS.ProcessEnv = {};

function aitbc(args: string[], options: { cwd: string; env?: Record<string, string>; until?: (r: Run) => boolean }): Promise<Run> {
  const child = spawn(process.execPath, [CLI, ...args], { cwd: options.cwd, env: { ...env, ...options.env }, stdio: ["ignore", "pipe", "pipe"] });
  const r: Run = { code: null, stdout: "", stderr: "" };
  child.stdout.on("data", (d: Buffer) => (r.stdout += d.toString()));
  child.stderr.on("data", (d: Buffer) => (r.stderr += d.toString()));
  return new Promise((resolve) => child.on("close", (code) => resolve({ ...r, code })));
}

beforeAll(async () => {
  dir = mkdtempSync(path.join(tmpdir(), "aitbc-flags-"));
  tinyGpt2 = path.join(dir, "built", "tiny-gpt2");
  await buildModel(RECIPES["tiny-gpt2"]!, tinyGpt2);
  // No GPU here, whatever the host has: a stand-in nvidia-smi that fails (doctor's CUDA check is then not needed).
  const bin = path.join(dir, "bin");
  mkdirSync(bin);
  writeFileSync(path.join(bin, "nvidia-smi"), "#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n");
  chmodSync(path.join(bin, "nvidia-smi"), 0o755);
  env = { ...process.env, PATH: `${bin}${path.delimiter}${process.env.PATH ?? ""}` };
  for (const k of Object.keys(env)) if (k.startsWith("AITBC_")) delete env[k];
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A working directory with the key at ./key.txt and a miner config in ./etc/ that names no key. */
function workdir(key: string, toml = ""): string {
  const cwd = mkdtempSync(path.join(dir, "cwd-"));
  writeFileSync(path.join(cwd, "key.txt"), `${key}\n`);
  mkdirSync(path.join(cwd, "etc"));
  writeFileSync(path.join(cwd, "etc", "miner.toml"), toml);
  return cwd;
}

describe("CLI flags", { timeout: 120_000 }, () => {
  it("miner: --key-file is relative to the working directory; --models (commas or repeated) sets what it serves", async () => {
    const coordinator = await FakeCoordinator.start();
    try {
      const cwd = workdir(coordinator.key);
      const child = spawn(
        process.execPath,
        [CLI, "miner", "-c", "etc/miner.toml", "--coordinator", coordinator.url, "--key-file", "key.txt", "--cpu", "--models", "alpha,beta", "--models", "gamma"],
        { cwd, env: { ...env, AITBC_MINER_FAKE_ENGINE_ENABLED: "true", AITBC_MINER_LOG_LEVEL: "warn" }, stdio: ["ignore", "pipe", "pipe"] },
      );
      let stderr = "";
      child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
      const exited = new Promise<number | null>((resolve) => child.on("exit", resolve));
      const hello = await Promise.race([
        coordinator.waitForType("hello", () => true, 30_000),
        exited.then((code) => Promise.reject(new Error(`the miner exited ${code}: ${stderr}`))),
      ]);
      expect(hello.models).toEqual(["alpha", "beta", "gamma"]);
      child.kill("SIGTERM");
      expect(await exited).toBe(0);
    } finally {
      await coordinator.close();
    }
  });

  it("miner: a --key-file that is not there names the path it tried, from the working directory (exit 78)", async () => {
    const cwd = workdir("unused");
    const r = await aitbc(["miner", "-c", "etc/miner.toml", "--key-file", "missing.key", "--cpu"], { cwd });
    expect(r.code).toBe(78);
    expect(r.stderr).toContain(path.join(cwd, "missing.key"));
    expect(r.stderr).not.toContain(path.join(cwd, "etc", "missing.key"));
  });

  it("doctor: --key-file from the working directory; a skipped coordinator check is unhealthy; hints name the models dir", async () => {
    const data = mkdtempSync(path.join(dir, "data-"));
    const config = loadCoordinatorConfig(undefined, { optional: true, env: {}, overrides: { "server.port": 0, "storage.data_dir": data, "log.level": "silent" } });
    const coordinator = new Coordinator({ config, log: silentLogger() });
    await coordinator.start();
    try {
      const { key } = await coordinator.store.createKey("miner", "rig", "ops", Date.now());
      const cwd = workdir(key, `[coordinator]\nurl = "${coordinator.url.replace(/^http/, "ws")}"\n`);
      // Not ./models, where `aitbc models build` puts a model by default: hints must say --models-dir.
      const models = path.join(cwd, "store", "models");
      cpSync(tinyGpt2, path.join(models, "tiny-gpt2"), { recursive: true });
      const doctor = async (args: string[]): Promise<{ code: number | null; checks: { name: string; status: string; summary: string; details?: string[] }[] }> => {
        const r = await aitbc(["doctor", "--json", "-c", "etc/miner.toml", "--models-dir", "store/models", ...args], { cwd });
        return { code: r.code, ...(JSON.parse(r.stdout) as { checks: { name: string; status: string; summary: string }[] }) };
      };

      const withKey = await doctor(["--key-file", "key.txt"]);
      expect(withKey.checks.find((c) => c.name === "coordinator")).toMatchObject({ status: "ok" });
      expect(withKey.code).toBe(0);

      // No key anywhere: the coordinator check cannot run, so the host is not known to be ready.
      const noKey = await doctor([]);
      expect(noKey.checks.find((c) => c.name === "coordinator")).toMatchObject({ status: "skip", summary: expect.stringMatching(/--key-file FILE/) as unknown });
      expect(noKey.code).toBe(1);
      const hostOnly = await doctor(["--no-coordinator"]);
      expect(hostOnly.checks.map((c) => c.name)).not.toContain("coordinator");
      expect(hostOnly.code).toBe(0);

      // A configured model that is not there fails, with the command that makes it in this models dir.
      writeFileSync(path.join(cwd, "etc", "miner.toml"), `[inference]\nmodels = ["tiny-gpt2", "gpt2-124m-random"]\n`);
      const missing = await doctor(["--no-coordinator"]);
      const models1 = missing.checks.find((c) => c.name === "models");
      expect(models1?.status).toBe("fail");
      expect(models1?.details).toContain(
        "gpt2-124m-random: configured in [inference] models but not valid here (aitbc models build gpt2-124m-random --models-dir store/models)",
      );
      expect(missing.code).toBe(1);
    } finally {
      await coordinator.stop();
    }
  });

  it("doctor: asks the config's [gpus] nvidia_smi; with [gpus] mode = \"cpu\" the CUDA provider is not needed", async () => {
    const smi = path.join(dir, "site-nvidia-smi");
    writeFileSync(smi, "#!/bin/sh\necho '0, NVIDIA H200, 143771 MiB, 550.54.15'\n");
    chmodSync(smi, 0o755);
    const cwd = workdir("unused", `[gpus]\nnvidia_smi = "${smi}"\n`);
    cpSync(tinyGpt2, path.join(cwd, "models", "tiny-gpt2"), { recursive: true });
    const doctor = async (extra: Record<string, string>): Promise<{ name: string; status: string; summary: string }[]> => {
      const r = await aitbc(["doctor", "--json", "-c", "etc/miner.toml", "--no-coordinator"], { cwd, env: extra });
      return (JSON.parse(r.stdout) as { checks: { name: string; status: string; summary: string }[] }).checks;
    };
    const gpu = await doctor({});
    expect(gpu.find((c) => c.name === "gpus")).toMatchObject({ status: "ok", summary: "1 GPU(s)" });
    // A GPU the miner would use and a CUDA provider that is not installed: that fails (where it is installed, it is tried on the GPU).
    if (describeCudaProviderProblem(checkCudaProvider()) !== "") expect(gpu.find((c) => c.name === "cuda-provider")?.status).toBe("fail");
    const cpu = await doctor({ AITBC_MINER_GPUS_MODE: "cpu" });
    expect(cpu.find((c) => c.name === "cuda-provider")?.status).not.toBe("fail");
  });

  it("up: --model (repeatable) serves each named model from the local miner", async () => {
    const cwd = workdir("unused");
    cpSync(tinyGpt2, path.join(cwd, "models", "tiny-gpt2"), { recursive: true });
    cpSync(tinyGpt2, path.join(cwd, "models", "house-model"), { recursive: true });
    const child = spawn(process.execPath, [CLI, "up", "--cpu", "--port", "0", "--data-dir", "data", "--models-dir", "models", "--model", "tiny-gpt2", "--model", "house-model"], {
      cwd,
      env,
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.stderr.on("data", (d: Buffer) => (out += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.on("exit", resolve));
    try {
      const deadline = Date.now() + 60_000;
      while (!/client key: \S+/.test(out)) {
        if (Date.now() > deadline || child.exitCode !== null) throw new Error(`no banner: ${out}`);
        await new Promise((r) => setTimeout(r, 100));
      }
      expect(out).toMatch(/local miner with tiny-gpt2, house-model on CPU/);
      const url = /coordinator (http:\/\/\S+),/.exec(out)![1]!;
      const key = /client key: (\S+)/.exec(out)![1]!;
      // The miner's hello may still be on its way when the banner prints: ask until it has landed.
      const served = async (): Promise<string[]> => {
        const res = await fetch(`${url}/v1/models`, { headers: { authorization: `Bearer ${key}` } });
        return ((await res.json()) as { data: { id: string }[] }).data.map((m) => m.id).sort();
      };
      let models = await served();
      for (let i = 0; i < 50 && models.length < 2; i++) {
        await new Promise((r) => setTimeout(r, 100));
        models = await served();
      }
      expect(models).toEqual(["house-model", "tiny-gpt2"]);
    } finally {
      child.kill("SIGTERM");
      await exited;
    }
  });

  it("up: --model names a model it cannot build or find: one line, before anything starts", async () => {
    const cwd = workdir("unused");
    const r = await aitbc(["up", "--port", "0", "--data-dir", "data", "--models-dir", "models", "--model", "tiny-gpt2", "--model", "my-export"], { cwd });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^aitbc: no model my-export in .*models: build or pull it first \(aitbc models pull REPO --name my-export --models-dir models\)\n$/);
  });
});
