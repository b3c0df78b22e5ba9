import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { ConfigError } from "../../src/common/errors.js";
import { computeSlots, coordinatorUrls, gatewayUrl, loadMinerConfig } from "../../src/miner/config.js";

const REPO_CONFIG = path.join(import.meta.dirname, "..", "..", "config", "miner.toml");

function tempFile(name: string, text: string): string {
  const dir = mkdtempSync(path.join(tmpdir(), "aitbc-miner-config-"));
  const file = path.join(dir, name);
  writeFileSync(file, text);
  return file;
}

describe("miner config", () => {
  it("loads the shipped config/miner.toml with its documented defaults", () => {
    const c = loadMinerConfig({ file: REPO_CONFIG, env: {} });
    expect(c.coordinator.url).toBe("ws://127.0.0.1:8080/v1/miners/connect");
    expect(c.coordinator.key).toBe("");
    expect(c.miner).toMatchObject({ maxConcurrent: 0, maxConcurrentPerGpu: 0, drainGraceMs: 30_000, progressIntervalMs: 500 });
    expect(c.gpus).toMatchObject({ mode: "auto", devices: [], nvidiaSmi: "nvidia-smi", detectTimeoutMs: 10_000, overrides: [] });
    expect(c.inference.models).toEqual(["tiny-gpt2"]);
    expect(c.fakeEngine).toBeUndefined();
  });

  it("reads the key from key_file relative to the config file, and env overrides the file", () => {
    const file = tempFile("miner.toml", '[coordinator]\nkey_file = "miner.key"\n[miner]\ndrain_grace = "2m"\n');
    writeFileSync(path.join(path.dirname(file), "miner.key"), "mk_secret\n");
    const c = loadMinerConfig({
      file,
      env: { AITBC_MINER_MINER_DRAIN_GRACE: "5s", AITBC_MINER_FAKE_ENGINE_ENABLED: "true" },
      requireKey: true,
    });
    expect(c.coordinator.key).toBe("mk_secret");
    expect(c.miner.drainGraceMs).toBe(5_000);
    expect(c.fakeEngine?.models).toEqual(["tiny-gpt2"]);
  });

  it("refuses to run without a key, naming the key", () => {
    expect(() => loadMinerConfig({ file: undefined, env: {}, requireKey: true })).toThrow(/coordinator\.key/);
  });

  it("names file and key for a bad value", () => {
    const file = tempFile("bad.toml", '[miner]\ndrain_grace = "soon"\n');
    try {
      loadMinerConfig({ file, env: {} });
      expect.unreachable();
    } catch (err) {
      expect(err).toBeInstanceOf(ConfigError);
      expect((err as Error).message).toContain(file);
      expect((err as Error).message).toContain("miner.drain_grace");
    }
    const unknown = tempFile("unknown.toml", "[miner]\nmax_concurency = 2\n");
    expect(() => loadMinerConfig({ file: unknown, env: {} })).toThrow(ConfigError);
  });

  it("turns what operators write into the gateway URL", () => {
    expect(gatewayUrl("http://coord:8080")).toBe("ws://coord:8080/v1/miners/connect");
    expect(gatewayUrl("https://coord.example")).toBe("wss://coord.example/v1/miners/connect");
    expect(gatewayUrl("coord:9000")).toBe("ws://coord:9000/v1/miners/connect");
    expect(gatewayUrl("ws://coord:9000/custom")).toBe("ws://coord:9000/custom");
    expect(() => gatewayUrl("ftp://coord")).toThrow();
    expect(coordinatorUrls("a:1, b:2,a:1")).toEqual(["ws://a:1/v1/miners/connect", "ws://b:2/v1/miners/connect"]);
    expect(coordinatorUrls(["wss://x", "http://y:8080"])).toEqual(["wss://x/v1/miners/connect", "ws://y:8080/v1/miners/connect"]);
    expect(() => coordinatorUrls(" , ")).toThrow();
  });

  it("computes slots per GPU, capped by max_concurrent", () => {
    const m = { maxConcurrent: 0, maxConcurrentPerGpu: 2, drainGraceMs: 0, progressIntervalMs: 0, streamText: true, textIntervalMs: 50, textMaxTokens: 16, name: "x" };
    expect(computeSlots(m, 8)).toBe(16);
    expect(computeSlots({ ...m, maxConcurrent: 5 }, 8)).toBe(5);
    expect(computeSlots(m, 0)).toBe(1);
    expect(computeSlots({ ...m, maxConcurrent: 3 }, 0)).toBe(3);
  });
});
