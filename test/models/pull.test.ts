import { execFile } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { AppError } from "../../src/common/errors.js";
import { ONNX_MODEL_PATH } from "../../src/inference/models/build-model.js";
import { loadModelInfo } from "../../src/inference/models/model-info.js";
import { pullModel, type PullProgress } from "../../src/inference/models/pull-model.js";
import { startFakeHub, type FakeHub } from "./fake-hub.js";
import { buildTinyModel } from "./tiny-model.js";

const REPO = "test-org/tiny-gpt2";
const CLI = path.resolve("dist/bin/aitbc.js");

let source: string;
let cleanupSource: () => void;
let hub: FakeHub;
let modelsDir: string;

beforeAll(async () => {
  ({ modelDir: source, cleanup: cleanupSource } = await buildTinyModel({ seed: 11 }));
  hub = await startFakeHub(REPO, source);
});
afterAll(async () => {
  await hub.close();
  cleanupSource();
});
beforeEach(() => {
  modelsDir = mkdtempSync(path.join(os.tmpdir(), "aitbc-pull-"));
  hub.requests.length = 0;
});
afterEach(() => rmSync(modelsDir, { recursive: true, force: true }));

const sameBytes = (a: string, b: string): boolean => readFileSync(a).equals(readFileSync(b));
const onnxSize = (): number => statSync(path.join(source, ONNX_MODEL_PATH)).size;

async function failure(p: Promise<unknown>): Promise<AppError> {
  try {
    await p;
  } catch (err) {
    if (err instanceof AppError) return err;
    throw err;
  }
  throw new Error("the pull succeeded");
}

describe("pullModel against a local hub", () => {
  it("downloads, verifies (sha256 for LFS, git blob sha1 otherwise) and installs a working model", async () => {
    const events: PullProgress[] = [];
    const result = await pullModel({ repo: REPO, hub: hub.url, modelsDir, onProgress: (p) => events.push(p) });
    const dir = path.join(modelsDir, "tiny-gpt2");
    expect(result.info.dir).toBe(dir);
    expect(loadModelInfo(dir).nLayer).toBe(2);
    for (const f of ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", ONNX_MODEL_PATH]) {
      expect(sameBytes(path.join(dir, f), path.join(source, f))).toBe(true);
    }
    expect(result.files.find((f) => f.path === ONNX_MODEL_PATH)?.verified).toBe("sha256");
    expect(result.files.find((f) => f.path === "config.json")?.verified).toBe("git-sha1");
    expect(events.filter((e) => e.done === "downloaded").map((e) => e.file)).toHaveLength(result.files.length);
    expect(readdirSync(modelsDir)).toEqual(["tiny-gpt2"]); // the staging folder is gone
  });

  it("resumes an interrupted download with a Range request and never installs a partial model", async () => {
    hub.cutNext(ONNX_MODEL_PATH, 1_000_000);
    const first = await failure(pullModel({ repo: REPO, hub: hub.url, modelsDir, attempts: 1 }));
    expect(first.code).toBe("pull_interrupted");
    expect(existsSync(path.join(modelsDir, "tiny-gpt2"))).toBe(false);
    const partial = statSync(path.join(modelsDir, ".pull-tiny-gpt2", ONNX_MODEL_PATH)).size;
    expect(partial).toBeGreaterThan(0);
    expect(partial).toBeLessThan(onnxSize());

    hub.requests.length = 0;
    const events: PullProgress[] = [];
    await pullModel({ repo: REPO, hub: hub.url, modelsDir, onProgress: (p) => events.push(p) });
    expect(hub.requests.find((r) => r.path === ONNX_MODEL_PATH)?.range).toBe(`bytes=${partial}-`);
    expect(events.find((e) => e.file === ONNX_MODEL_PATH && e.done !== undefined)?.done).toBe("resumed");
    expect(events.find((e) => e.file === "config.json")?.done).toBe("cached");
    expect(hub.requests.some((r) => r.path === "config.json")).toBe(false);
    expect(sameBytes(path.join(modelsDir, "tiny-gpt2", ONNX_MODEL_PATH), path.join(source, ONNX_MODEL_PATH))).toBe(true);
  });

  it("retries within one run when the connection drops", async () => {
    hub.cutNext(ONNX_MODEL_PATH, 500_000);
    await pullModel({ repo: REPO, hub: hub.url, modelsDir });
    const onnxRequests = hub.requests.filter((r) => r.path === ONNX_MODEL_PATH);
    expect(onnxRequests).toHaveLength(2);
    expect(onnxRequests[1]?.range).toMatch(/^bytes=[1-9]\d*-$/);
    expect(sameBytes(path.join(modelsDir, "tiny-gpt2", ONNX_MODEL_PATH), path.join(source, ONNX_MODEL_PATH))).toBe(true);
  });

  it("throws away a corrupted file and downloads it again", async () => {
    hub.corruptNext(ONNX_MODEL_PATH, 1);
    await pullModel({ repo: REPO, hub: hub.url, modelsDir });
    expect(hub.requests.filter((r) => r.path === ONNX_MODEL_PATH)).toHaveLength(2);
    expect(sameBytes(path.join(modelsDir, "tiny-gpt2", ONNX_MODEL_PATH), path.join(source, ONNX_MODEL_PATH))).toBe(true);
  });

  it("refuses a file that stays corrupted, installing nothing", async () => {
    hub.corruptNext("tokenizer.json", 5);
    const err = await failure(pullModel({ repo: REPO, hub: hub.url, modelsDir, attempts: 2 }));
    expect(err.code).toBe("pull_checksum_mismatch");
    expect(err.message).toMatch(/tokenizer\.json failed checksum verification/);
    expect(existsSync(path.join(modelsDir, "tiny-gpt2"))).toBe(false);
    expect(existsSync(path.join(modelsDir, ".pull-tiny-gpt2", "tokenizer.json"))).toBe(false);
    hub.corruptNext("tokenizer.json", 0);
  });

  it("refuses an LFS file whose X-Linked-ETag disagrees with the listing", async () => {
    hub.wrongLinkedEtag = true;
    try {
      const err = await failure(pullModel({ repo: REPO, hub: hub.url, modelsDir }));
      expect(err.code).toBe("pull_checksum_mismatch");
      expect(err.message).toMatch(/X-Linked-ETag/);
      expect(existsSync(path.join(modelsDir, "tiny-gpt2"))).toBe(false);
    } finally {
      hub.wrongLinkedEtag = false;
    }
  });

  it("checks free disk space before downloading", async () => {
    const err = await failure(pullModel({ repo: REPO, hub: hub.url, modelsDir, freeBytes: () => 1_000_000 }));
    expect(err.code).toBe("insufficient_disk");
    expect(err.details).toMatchObject({ free_bytes: 1_000_000 });
    expect(hub.requests.filter((r) => r.path === ONNX_MODEL_PATH)).toHaveLength(0);
  });

  it("names an unknown repo and refuses to overwrite an installed model", async () => {
    expect((await failure(pullModel({ repo: "nobody/nothing", hub: hub.url, modelsDir }))).code).toBe("pull_not_found");
    expect((await failure(pullModel({ repo: REPO, hub: hub.url, modelsDir, name: "../escape" }))).code).toBe("pull_bad_name");
    await pullModel({ repo: REPO, hub: hub.url, modelsDir, name: "mine" });
    expect((await failure(pullModel({ repo: REPO, hub: hub.url, modelsDir, name: "mine" }))).code).toBe("model_exists");
    await pullModel({ repo: REPO, hub: hub.url, modelsDir, name: "mine", force: true });
    expect(loadModelInfo(path.join(modelsDir, "mine")).name).toBe("mine");
  });
});

describe("aitbc models pull (CLI)", () => {
  it("pulls with plain progress lines when stderr is not a terminal", async () => {
    const { stdout, stderr } = await promisify(execFile)(process.execPath, [CLI, "models", "pull", REPO, "--hub", hub.url, "--models-dir", modelsDir]);
    expect(stdout).toMatch(/^pulled test-org\/tiny-gpt2 into .*tiny-gpt2: 1\.67M parameters/);
    expect(stderr).toMatch(/onnx\/decoder_model_merged\.onnx: downloaded \(.* MiB, verified\)/);
    expect(stderr).not.toMatch(/\x1b\[/); // no terminal control codes
    expect(loadModelInfo(path.join(modelsDir, "tiny-gpt2")).vocabSize).toBe(50257);
  });
});
