import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { afterEach, beforeAll, describe, expect, it } from "vitest";
import { ApiClient } from "../../src/client/api-client.js";
import { aitbc, assertBuilt, cleanEnv, cleanup, CliProcess, claim, complete, run, startCoordinator, tempDir, type Started } from "./cli-harness.js";

/**
 * `aitbc jobs …` end to end: real child processes against a real coordinator; jobs progress
 * through a fake miner on the store's verbs. Checks what a user and a script see: --json is the
 * API's JSON, plain progress lines when not on a TTY, the result text, one-line API errors and
 * the documented exit codes (src/bin/exit-codes.ts: 0 completed, 1 failed, 2 cancelled, 3 API
 * error, 64 usage, 69 unreachable, 78 bad client config or key file, 130 Ctrl-C).
 */
beforeAll(() => assertBuilt());
afterEach(cleanup);

function conn(s: Started): string[] {
  return ["--url", s.url, "--key", s.key];
}

/** Setup steps go through the ApiClient in-process: each CLI child costs a second of CPU here. */
async function submitDirect(s: Started, input: string, priority: "low" | "normal" = "normal", format: "json" | "text" = "json"): Promise<string> {
  const body = { model: "tiny-gpt2", input, priority, output_config: { destination: "local", format } };
  return (await new ApiClient({ url: s.url, key: s.key }).submitJob(body)).job_id;
}

function json<T = Record<string, unknown>>(text: string): T {
  return JSON.parse(text) as T;
}

// Each CLI child costs about a second of CPU; on a loaded 2-core machine a test may need minutes.
describe("aitbc jobs", { timeout: 180_000 }, () => {
  it("submit passes every flag to the API; status --json and text", async () => {
    const s = await startCoordinator();
    const cwd = tempDir("aitbc-cwd-");
    const sub = await aitbc(
      [
        "jobs", "submit", "--model", "tiny-gpt2", "--input", "Hello GPU network",
        "--max-new-tokens", "7", "--temperature", "0", "--top-k", "5", "--top-p", "0.5", "--repetition-penalty", "1.2",
        "--stop", "END", "--stop", "\n\n", "--seed", "42", "--priority", "high", "--timeout-seconds", "60",
        "--gpu-type", "v100", "--gpu-count", "2", "--min-vram-gb", "16", "--format", "text", "--json", ...conn(s),
      ],
      { cwd },
    );
    expect(sub.code, sub.stderr).toBe(0);
    const submitted = json<{ job_id: string; status: string; estimated_time_seconds: number }>(sub.stdout);
    expect(submitted.job_id).toMatch(/^job_/);
    expect(submitted.status).toBe("queued");

    const st = await aitbc(["jobs", "status", submitted.job_id, "--json", ...conn(s)], { cwd });
    expect(st.code, st.stderr).toBe(0);
    const status = json<Record<string, unknown>>(st.stdout);
    expect(status).toMatchObject({
      job_id: submitted.job_id,
      status: "queued",
      model: "tiny-gpt2",
      priority: "high",
      timeout_seconds: 60,
      eligible_miners: 0,
      output_config: { destination: "local", format: "text" },
      requirements: { gpu_type: "v100", gpu_count: 2, min_vram_gb: 16 },
      parameters: { max_new_tokens: 7, temperature: 0, top_k: 5, top_p: 0.5, repetition_penalty: 1.2, stop: ["END", "\n\n"], seed: 42 },
    });
    const human = await aitbc(["jobs", "status", submitted.job_id, ...conn(s)], { cwd });
    expect(human.stdout).toMatch(/^status\s+queued$/m);
    expect(human.stdout).toMatch(/^eligible\s+0 connected miner/m);
  });

  it("list (filter, pages), download and history", async () => {
    const s = await startCoordinator();
    const cwd = tempDir("aitbc-cwd-");
    const submitted = { job_id: await submitDirect(s, "Hello", "normal", "text") };
    // A second job stays queued, so list --status filters something.
    const other = { job_id: await submitDirect(s, "x", "low") };

    const ref = await claim(s.coordinator, submitted.job_id);
    await run(s.coordinator, ref);
    await complete(s.coordinator, ref, "generated text");

    const list = json<{ jobs: { job_id: string; status: string }[]; total: number; has_more: boolean }>(
      (await aitbc(["jobs", "list", "--json", ...conn(s)], { cwd })).stdout,
    );
    expect(list.total).toBe(2);
    expect(list.jobs.map((j) => j.job_id).sort()).toEqual([submitted.job_id, other.job_id].sort());
    const completedOnly = json<{ jobs: { job_id: string }[] }>((await aitbc(["jobs", "list", "--status", "completed", "--json", ...conn(s)], { cwd })).stdout);
    expect(completedOnly.jobs.map((j) => j.job_id)).toEqual([submitted.job_id]);
    const paged = await aitbc(["jobs", "list", "--limit", "1", ...conn(s)], { cwd });
    expect(paged.stdout.split("\n").filter((l) => l.startsWith("job_"))).toHaveLength(1);
    const cursor = /--cursor (\S+)/.exec(paged.stderr)?.[1];
    expect(cursor, paged.stderr).toBeDefined();
    const page2 = json<{ jobs: { job_id: string }[]; has_more: boolean }>((await aitbc(["jobs", "list", "--limit", "1", "--cursor", cursor!, "--json", ...conn(s)], { cwd })).stdout);
    expect(page2.jobs).toHaveLength(1);
    expect(page2.has_more).toBe(false);

    const dl = await aitbc(["jobs", "download", submitted.job_id, ...conn(s)], { cwd });
    expect(dl.code, dl.stderr).toBe(0);
    expect(dl.stdout).toBe("generated text");

    const today = new Date().toISOString().slice(0, 10);
    const hist = await aitbc(["jobs", "history", "--from", today, "--to", today, "--json", ...conn(s)], { cwd });
    expect(hist.code, hist.stderr).toBe(0);
    const history = json<{ jobs: { job_id: string; status: string }[]; total: number }>(hist.stdout);
    expect(history.jobs).toEqual([expect.objectContaining({ job_id: submitted.job_id, status: "completed" })]);
  });

  it("--input-file uploads the file and submits its file_id", async () => {
    const s = await startCoordinator();
    const cwd = tempDir("aitbc-cwd-");
    const prompt = "Once upon a time,\nin a GPU far away — ünïcode too.\n";
    writeFileSync(path.join(cwd, "prompt.txt"), prompt);
    const sub = await aitbc(["jobs", "submit", "--model", "tiny-gpt2", "--input-file", "prompt.txt", ...conn(s)], { cwd });
    expect(sub.code, sub.stderr).toBe(0);
    const jobId = sub.stdout.trim();
    expect(jobId).toMatch(/^job_[a-z0-9]+$/);
    const job = await s.coordinator.store.getJob("t", jobId);
    expect(job?.input).toBe(prompt);
    expect(job?.inputFileId).toMatch(/^file_/);

    const missing = await aitbc(["jobs", "submit", "--model", "tiny-gpt2", "--input-file", "nope.txt", ...conn(s)], { cwd });
    expect(missing.code).toBe(64);
    expect(missing.stderr).toMatch(/^aitbc: cannot read --input-file nope\.txt/);
  });

  it("--wait prints plain progress lines off a TTY, then the result text", async () => {
    const s = await startCoordinator();
    const cwd = tempDir("aitbc-cwd-");
    const p = new CliProcess(["jobs", "submit", "--model", "tiny-gpt2", "--input", "Hi", "--max-new-tokens", "300", "--wait", ...conn(s)], { cwd });
    await p.stderrMatches(/^queued \(no miner is connected\)$/m);
    const jobId = /submitted (job_\w+)/.exec(p.stderr)![1]!;
    const ref = await claim(s.coordinator, jobId);
    await run(s.coordinator, ref);
    await p.stderrMatches(/^running$/m);
    s.coordinator.context.events.publishProgress({ jobId, attempt: ref.attempt, progress: 37.3, tokens: 112, maxTokens: 300, tokensPerSecond: 250.2, at: Date.now() });
    await p.stderrMatches(/^running 37% 112\/300 tokens 250 tok\/s$/m);
    await complete(s.coordinator, ref, "the final text");
    const r = await p.done;
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe("the final text\n");
    expect(r.stderr).toMatch(/^assigned to m1$/m);
    expect(r.stderr).toMatch(/^completed$/m);
    // No terminal control sequences off a TTY.
    expect(r.stderr).not.toContain("\u001b[");
  });

  it("wait --output writes the result; a failed job exits 1 with its error", async () => {
    const s = await startCoordinator();
    const cwd = tempDir("aitbc-cwd-");
    const ok = await submitDirect(s, "a");
    const ref = await claim(s.coordinator, ok);
    await run(s.coordinator, ref);
    await complete(s.coordinator, ref, "to a file");
    // Already finished: the stream gives the snapshot and the log, then ends.
    const w = await aitbc(["jobs", "wait", ok, "--output", "out.txt", ...conn(s)], { cwd });
    expect(w.code, w.stderr).toBe(0);
    expect(w.stdout).toBe("");
    expect(readFileSync(path.join(cwd, "out.txt"), "utf8")).toBe("to a file");

    const bad = await submitDirect(s, "b");
    const p = new CliProcess(["jobs", "wait", bad, ...conn(s)], { cwd });
    await p.stderrMatches(/^queued/m);
    const ref2 = await claim(s.coordinator, bad);
    await run(s.coordinator, ref2);
    expect(await s.coordinator.store.failAttempt(ref2, { code: "engine_error", message: "the engine crashed", retryable: false }, Date.now(), 1000)).toBe("failed");
    const r = await p.done;
    expect(r.code).toBe(1);
    expect(r.stdout).toBe("");
    expect(r.stderr).toContain(`aitbc: job ${bad} failed: the engine crashed (engine_error)`);
  });

  it("cancel: a waiting client exits 2; cancelling again is a one-line 409; Ctrl-C stops following only", async () => {
    const s = await startCoordinator();
    const cwd = tempDir("aitbc-cwd-");
    const jobId = await submitDirect(s, "c");
    const p = new CliProcess(["jobs", "wait", jobId, ...conn(s)], { cwd });
    await p.stderrMatches(/^queued/m);
    const c = await aitbc(["jobs", "cancel", jobId, ...conn(s)], { cwd });
    expect(c.code, c.stderr).toBe(0);
    expect(c.stdout).toBe(`cancelled ${jobId}\n`);
    const r = await p.done;
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(`aitbc: job ${jobId} cancelled`);

    const again = await aitbc(["jobs", "cancel", jobId, ...conn(s)], { cwd });
    expect(again.code).toBe(3);
    expect(again.stderr).toBe("aitbc: the job is already cancelled (job_finished, HTTP 409)\n");

    // Ctrl-C while following: exit 130, a hint to follow again, and the job is untouched.
    const queued = await submitDirect(s, "d");
    const f = new CliProcess(["jobs", "wait", queued, ...conn(s)], { cwd });
    await f.stderrMatches(/^queued/m);
    f.child.kill("SIGINT");
    const fr = await f.done;
    expect(fr.code).toBe(130);
    expect(fr.stderr).toContain(`Follow it again: aitbc jobs wait ${queued}`);
    expect((await s.coordinator.store.getJob("t", queued))?.status).toBe("queued");
  });

  it("API errors are one line with exit code 3, usage errors one line and a hint with 64, never a stack trace", async () => {
    const s = await startCoordinator();
    const cwd = tempDir("aitbc-cwd-");
    const badKey = await aitbc(["jobs", "status", "job_abc123", "--url", s.url, "--key", "aitbc_ck_wrong"], { cwd });
    expect(badKey.code).toBe(3);
    expect(badKey.stderr).toBe("aitbc: the API key is not valid (unauthorized, HTTP 401)\n");
    expect(badKey.stdout).toBe("");

    const unknown = await aitbc(["jobs", "status", "job_abc123", ...conn(s)], { cwd });
    expect(unknown.stderr).toBe("aitbc: no such job (job_not_found, HTTP 404)\n");
    expect(unknown.code).toBe(3);

    const invalid = await aitbc(["jobs", "submit", "--model", "tiny-gpt2", "--input", "x", "--temperature", "5", ...conn(s)], { cwd });
    expect(invalid.code).toBe(3);
    expect(invalid.stderr).toMatch(/^aitbc: .*temperature.* \(validation_failed, HTTP 422\)\n$/);

    const notDone = await submitDirect(s, "x");
    const dl = await aitbc(["jobs", "download", notDone, ...conn(s)], { cwd });
    expect(dl.code).toBe(3);
    expect(dl.stderr).toMatch(/^aitbc: the job is queued; .* \(job_not_completed, HTTP 409\)\n$/);

    const both = await aitbc(["jobs", "submit", "--model", "m", "--input", "a", "--input-file", "f", ...conn(s)], { cwd });
    expect(both.code).toBe(64);
    expect(both.stderr).toBe("aitbc: pass exactly one of --input and --input-file\n(see aitbc jobs submit --help)\n");
    const noModel = await aitbc(["jobs", "submit", "--input", "a", ...conn(s)], { cwd });
    expect(noModel.code).toBe(64);
    expect(noModel.stderr).toBe("aitbc: required option '--model <model>' not specified\n(see aitbc jobs submit --help)\n");
    const badNumber = await aitbc(["jobs", "list", "--limit", "ten", ...conn(s)], { cwd });
    expect(badNumber.code).toBe(64);
    expect(badNumber.stderr).toMatch(/^aitbc: option '--limit <n>' argument 'ten' is invalid\. expected an integer\n\(see aitbc jobs list --help\)\n$/);
    for (const r of [badKey, unknown, invalid, dl, both, noModel, badNumber]) expect(r.stderr).not.toMatch(/\n\s+at /);

    const help = await aitbc(["jobs", "submit", "--help"], { cwd });
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/Exit codes \(every aitbc command\):[\s\S]*0 +success[\s\S]*1 +with --wait: the job failed[\s\S]*2 +with --wait: the job was cancelled[\s\S]*3 +the coordinator refused[\s\S]*64 +usage error/);
  });

  it("finds the coordinator and key: flag > env > client config > data/local-client.key", async () => {
    const s = await startCoordinator();
    const home = tempDir("aitbc-home-");
    const cwd = tempDir("aitbc-cwd-");
    const closed = "http://127.0.0.1:9"; // nothing listens on the discard port here
    const status = (args: string[], env: Record<string, string>) => aitbc(["jobs", "list", "--json", ...args], { cwd, env: cleanEnv(home, env) });

    // Nothing configured: a one-line hint, exit 78 (configuration).
    const none = await status([], { AITBC_URL: s.url });
    expect(none.code).toBe(78);
    expect(none.stderr).toMatch(/^aitbc: no API key: pass --key/);

    // The local key file `aitbc up` writes, relative to the working directory; URL from env.
    mkdirSync(path.join(cwd, "data"));
    writeFileSync(path.join(cwd, "data", "local-client.key"), `${s.key}\n`);
    expect((await status([], { AITBC_URL: s.url })).code).toBe(0);

    // The default client config (~/.config/aitbc/client.toml) beats the local key file.
    mkdirSync(path.join(home, ".config", "aitbc"), { recursive: true });
    writeFileSync(path.join(home, ".config", "aitbc", "client.toml"), `url = "${s.url}"\nkey = "aitbc_ck_from_config"\n`);
    const fromConfig = await status([], {});
    expect(fromConfig.stderr).toBe("aitbc: the API key is not valid (unauthorized, HTTP 401)\n");

    // Env beats the config file (key and URL each on their own).
    expect((await status([], { AITBC_KEY: s.key })).code).toBe(0);
    const envUrl = await status([], { AITBC_KEY: s.key, AITBC_URL: closed });
    expect(envUrl.code).toBe(69);
    expect(envUrl.stderr).toMatch(/^aitbc: cannot reach the coordinator at http:\/\/127\.0\.0\.1:9/);

    // Flags beat env.
    const flagUrl = await status(["--url", s.url], { AITBC_KEY: s.key, AITBC_URL: closed });
    expect(flagUrl.code, flagUrl.stderr).toBe(0);
    const flagKey = await status(["--key", "aitbc_ck_flag"], { AITBC_KEY: s.key });
    expect(flagKey.stderr).toContain("(unauthorized, HTTP 401)");
    writeFileSync(path.join(cwd, "key.txt"), `${s.key}\n`);
    expect((await status(["--key-file", "key.txt"], { AITBC_KEY: "aitbc_ck_env_bad" })).code).toBe(0);

    // --client-config names another file; it must exist and have only known keys.
    writeFileSync(path.join(cwd, "other.toml"), `url = "${s.url}"\nkey = "${s.key}"\n`);
    expect((await status(["--client-config", "other.toml"], {})).code).toBe(0);
    writeFileSync(path.join(cwd, "typo.toml"), `url = "${s.url}"\napi_key = "x"\n`);
    const typo = await status(["--client-config", "typo.toml"], {});
    expect(typo.code).toBe(78);
    expect(typo.stderr).toMatch(/typo\.toml: .*allowed keys: url, key/);
  });
});
