import { createHash, randomBytes, type Hash } from "node:crypto";
import { createReadStream, createWriteStream, existsSync, mkdirSync, renameSync, rmSync, statSync, statfsSync } from "node:fs";
import path from "node:path";
import { Readable, Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import type { ReadableStream as WebReadableStream } from "node:stream/web";
import { AppError, ModelError, errorMessage } from "../../common/errors.js";
import { ONNX_MODEL_PATH } from "./build-model.js";
import { loadModelInfo, type ModelInfo } from "./model-info.js";

/** Files fetched from a repo: the optimum layout's required files plus optional extras if listed. */
const REQUIRED_FILES = ["config.json", "tokenizer.json", "tokenizer_config.json", ONNX_MODEL_PATH];
const OPTIONAL_FILES = ["generation_config.json", `${ONNX_MODEL_PATH}_data`];

/** One file of the hub's tree listing (`GET {hub}/api/models/{repo}/tree/{revision}?recursive=true`). */
interface HubTreeEntry {
  type: string;
  path: string;
  size: number;
  /** Git blob sha1 of the file (of the pointer for LFS files). */
  oid: string;
  lfs?: { oid: string; size: number };
}

/** What a downloaded file must hash to: LFS files by sha256, plain git files by git blob sha1. */
interface Expected {
  path: string;
  size: number;
  algorithm: "sha256" | "git-sha1";
  digest: string;
}

export interface PullProgress {
  file: string;
  /** Bytes of this file on disk so far (including bytes kept from an earlier, interrupted run). */
  received: number;
  total: number;
  /** Set on the event that closes a file: "downloaded", "resumed" or "cached" (already complete). */
  done?: "downloaded" | "resumed" | "cached";
}

export interface PullOptions {
  /** Repo id on the hub, e.g. "Xenova/gpt2". */
  repo: string;
  /** Hub base URL. Default https://huggingface.co. */
  hub?: string;
  /** Branch, tag or commit. Default "main". */
  revision?: string;
  modelsDir: string;
  /** Folder name under modelsDir. Default: the repo id's last segment. */
  name?: string;
  /** Replace an existing model folder. Default false. */
  force?: boolean;
  /** Bearer token for private repos (HF_TOKEN). */
  token?: string;
  /** Attempts per file when the connection drops or the checksum fails; each retry resumes. Default 3. */
  attempts?: number;
  onProgress?: (p: PullProgress) => void;
  /** Free bytes on the file system holding `dir` (injectable: tests cannot fill a disk). */
  freeBytes?: (dir: string) => number;
}

export interface PullResult {
  info: ModelInfo;
  files: { path: string; size: number; verified: Expected["algorithm"] }[];
}

/**
 * Downloads a real export from a Hugging Face-compatible hub and installs it atomically.
 *
 * 1. The tree listing gives each file's size and checksum (sha256 for LFS files, the git
 *    blob sha1 otherwise); a `X-Linked-ETag` header on the file's response must agree.
 * 2. Files go to `<modelsDir>/.pull-<name>/`, which survives an interrupted run: the next run
 *    re-hashes what is there and continues with an HTTP Range request.
 * 3. Before downloading, the free space must cover what is still missing.
 * 4. Each file is verified; a mismatch deletes it and retries. When all are verified and the
 *    folder passes {@link loadModelInfo}, it is renamed into place: never a half-written model.
 */
export async function pullModel(options: PullOptions): Promise<PullResult> {
  const hub = (options.hub ?? "https://huggingface.co").replace(/\/+$/, "");
  const revision = options.revision ?? "main";
  const repo = options.repo.replace(/^\/+|\/+$/g, "");
  if (!/^[\w.-]+(\/[\w.-]+)?$/.test(repo)) throw new ModelError("pull_bad_repo", "the repo id must look like owner/name", { repo });
  const name = options.name ?? repo.split("/").pop() ?? repo;
  if (!/^[\w][\w.-]*$/.test(name)) throw new ModelError("pull_bad_name", "the model name may use letters, digits, '.', '_' and '-' only", { name });
  const modelsDir = path.resolve(options.modelsDir);
  const target = path.join(modelsDir, name);
  if (existsSync(target) && options.force !== true) throw new ModelError("model_exists", "the model folder already exists (use --force to replace it)", { dir: target });
  const headers: Record<string, string> = options.token === undefined ? {} : { authorization: `Bearer ${options.token}` };

  const expected = await listFiles(hub, repo, revision, headers);
  const staging = path.join(modelsDir, `.pull-${name}`);
  mkdirSync(staging, { recursive: true });

  const missing = expected.reduce((sum, e) => sum + Math.max(0, e.size - sizeOf(path.join(staging, e.path))), 0);
  const free = (options.freeBytes ?? freeBytesOf)(modelsDir);
  // Keep a margin: the file system also needs room for metadata, and others write too.
  const needed = Math.ceil(missing * 1.05) + 16 * 1024 * 1024;
  if (free < needed) throw new ModelError("insufficient_disk", "not enough free disk space for the download", { dir: modelsDir, needed_bytes: needed, free_bytes: free });

  const attempts = options.attempts ?? 3;
  for (const e of expected) {
    const file = path.join(staging, e.path);
    mkdirSync(path.dirname(file), { recursive: true });
    const url = `${hub}/${repo}/resolve/${encodeURIComponent(revision)}/${e.path}`;
    for (let attempt = 1; ; attempt++) {
      try {
        await downloadFile(url, file, e, headers, options.onProgress);
        break;
      } catch (err) {
        if (!(err instanceof AppError && err.retryable) || attempt >= attempts) throw err;
      }
    }
  }

  try {
    loadModelInfo(staging);
  } catch (err) {
    throw new ModelError("pull_invalid_model", "the downloaded files are not a usable model", { repo, cause: errorMessage(err) });
  }
  install(staging, target);
  return { info: loadModelInfo(target), files: expected.map((e) => ({ path: e.path, size: e.size, verified: e.algorithm })) };
}

async function listFiles(hub: string, repo: string, revision: string, headers: Record<string, string>): Promise<Expected[]> {
  const url = `${hub}/api/models/${repo}/tree/${encodeURIComponent(revision)}?recursive=true`;
  let body: unknown;
  try {
    const res = await fetch(url, { headers });
    if (res.status === 401 || res.status === 403 || res.status === 404) {
      throw new ModelError("pull_not_found", "the hub has no such repo or revision (or it needs a token)", { repo, revision, status: res.status });
    }
    if (!res.ok) throw new ModelError("pull_hub_error", "the hub's file listing failed", { repo, status: res.status });
    body = await res.json();
  } catch (err) {
    if (err instanceof ModelError) throw err;
    throw new ModelError("pull_hub_unreachable", "cannot reach the hub", { hub, cause: errorMessage(err) });
  }
  if (!Array.isArray(body)) throw new ModelError("pull_hub_error", "the hub's file listing is not a list", { repo });
  const entries = new Map<string, HubTreeEntry>();
  for (const raw of body as unknown[]) {
    const entry = raw as Partial<HubTreeEntry>;
    if (entry.type === "file" && typeof entry.path === "string" && typeof entry.size === "number" && typeof entry.oid === "string") {
      entries.set(entry.path, entry as HubTreeEntry);
    }
  }
  const out: Expected[] = [];
  for (const p of [...REQUIRED_FILES, ...OPTIONAL_FILES]) {
    const entry = entries.get(p);
    if (entry === undefined) {
      if (REQUIRED_FILES.includes(p)) throw new ModelError("pull_not_a_model", `the repo has no ${p} (an optimum ONNX export is needed)`, { repo, revision, file: p });
      continue;
    }
    out.push(
      entry.lfs !== undefined
        ? { path: p, size: entry.lfs.size, algorithm: "sha256", digest: entry.lfs.oid.toLowerCase() }
        : { path: p, size: entry.size, algorithm: "git-sha1", digest: entry.oid.toLowerCase() },
    );
  }
  return out;
}

/** Git's blob id: sha1 over "blob <size>\0" and the content. */
function newHash(e: Expected): Hash {
  if (e.algorithm === "sha256") return createHash("sha256");
  return createHash("sha1").update(`blob ${e.size}\0`);
}

async function downloadFile(url: string, file: string, e: Expected, headers: Record<string, string>, onProgress?: (p: PullProgress) => void): Promise<void> {
  const report = (received: number, done?: PullProgress["done"]): void => onProgress?.({ file: e.path, received, total: e.size, ...(done === undefined ? {} : { done }) });
  let hash = newHash(e);
  let have = sizeOf(file);
  if (have > e.size) {
    rmSync(file);
    have = 0;
  }
  if (have > 0) for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  if (have === e.size) {
    verify(file, e, hash);
    report(have, "cached");
    return;
  }

  const { response, linkedEtag } = await fetchFollowing(url, have > 0 ? { ...headers, range: `bytes=${have}-` } : headers);
  if (linkedEtag !== undefined && e.algorithm === "sha256" && linkedEtag !== e.digest) {
    await response.body?.cancel();
    throw new ModelError("pull_checksum_mismatch", "the hub's X-Linked-ETag disagrees with its file listing", { file: e.path, listed: e.digest, header: linkedEtag });
  }
  if (response.status !== 200 && response.status !== 206) {
    await response.body?.cancel();
    if (response.status >= 500) throw retryable("pull_http_error", "the hub failed a file download", { file: e.path, status: response.status });
    throw new ModelError("pull_http_error", "the hub refused a file download", { file: e.path, status: response.status });
  }
  const resumed = have > 0 && response.status === 206;
  if (!resumed && have > 0) {
    // The server ignored the Range request and sent the whole file: start over.
    hash = newHash(e);
    have = 0;
  }
  await streamTo(response, file, resumed, hash, have, report);
  verify(file, e, hash);
  report(e.size, resumed ? "resumed" : "downloaded");
}

async function streamTo(response: Response, file: string, append: boolean, hash: Hash, start: number, report: (received: number) => void): Promise<void> {
  if (response.body === null) throw retryable("pull_interrupted", "the download ended early", { file });
  let received = start;
  let lastReport = 0;
  const meter = new Transform({
    transform(chunk: Buffer, _enc, done) {
      hash.update(chunk);
      received += chunk.length;
      const now = Date.now();
      if (now - lastReport >= 100) {
        lastReport = now;
        report(received);
      }
      done(null, chunk);
    },
  });
  try {
    await pipeline(Readable.fromWeb(response.body as WebReadableStream<Uint8Array>), meter, createWriteStream(file, { flags: append ? "a" : "w" }));
  } catch (err) {
    // What arrived stays on disk; the next attempt (or run) resumes from there.
    throw retryable("pull_interrupted", "the download was interrupted", { file, cause: errorMessage(err) });
  }
}

function verify(file: string, e: Expected, hash: Hash): void {
  const size = sizeOf(file);
  const digest = hash.digest("hex");
  if (size !== e.size || digest !== e.digest) {
    rmSync(file, { force: true });
    throw retryable("pull_checksum_mismatch", `${e.path} failed checksum verification`, { file: e.path, algorithm: e.algorithm, expected: e.digest, actual: digest, size });
  }
}

/** Follows redirects by hand so that an `X-Linked-ETag` on the hub's redirect is not lost. */
async function fetchFollowing(url: string, headers: Record<string, string>): Promise<{ response: Response; linkedEtag: string | undefined }> {
  let current = url;
  let linkedEtag: string | undefined;
  for (let hop = 0; hop < 6; hop++) {
    let response: Response;
    try {
      response = await fetch(current, { headers, redirect: "manual" });
    } catch (err) {
      throw retryable("pull_interrupted", "cannot reach the hub", { url: current, cause: errorMessage(err) });
    }
    const tag = response.headers.get("x-linked-etag") ?? undefined;
    if (tag !== undefined) linkedEtag = tag.replace(/^W\//, "").replace(/"/g, "").toLowerCase();
    const location = response.headers.get("location");
    if (response.status >= 300 && response.status < 400 && location !== null) {
      await response.body?.cancel();
      const next = new URL(location, current);
      // The token is for the hub only, never for the storage host it redirects to.
      if (next.origin !== new URL(current).origin) headers = Object.fromEntries(Object.entries(headers).filter(([k]) => k !== "authorization"));
      current = next.toString();
      continue;
    }
    return { response, linkedEtag };
  }
  throw new ModelError("pull_http_error", "too many redirects", { url });
}

function install(staging: string, target: string): void {
  if (existsSync(target)) {
    const old = `${target}.old-${process.pid}-${randomBytes(4).toString("hex")}`;
    renameSync(target, old);
    renameSync(staging, target);
    rmSync(old, { recursive: true, force: true });
  } else {
    renameSync(staging, target);
  }
}

/** A failure that another attempt may fix (a dropped connection, a corrupted transfer, a 5xx). */
function retryable(code: string, message: string, details: Record<string, unknown>): AppError {
  return new AppError(code, message, { status: 502, retryable: true, details });
}

function sizeOf(file: string): number {
  try {
    return statSync(file).size;
  } catch {
    return 0;
  }
}

function freeBytesOf(dir: string): number {
  const s = statfsSync(dir);
  return s.bavail * s.bsize;
}
