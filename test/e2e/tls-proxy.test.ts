import { execFile, spawn, type ChildProcess } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { request } from "node:https";
import path from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CLI, Cluster, ROOT, assertBuilt, freePort, waitFor } from "./cluster.js";

/**
 * The README's two-host TLS setup ("Running it on several machines"): a self-signed
 * certificate made with the README's openssl command, HAProxy terminating TLS with
 * config/haproxy-tls.cfg in front of a coordinator on 127.0.0.1, a miner dialling wss:// and
 * the CLI submitting over https://, both trusting the certificate through NODE_EXTRA_CA_CERTS.
 */
const run = promisify(execFile);
let cluster: Cluster;
let haproxy: ChildProcess | undefined;
let haproxyOutput = "";
let tlsPort = 0;
let certFile = "";

/** GET over https trusting only our certificate: the test process itself started without NODE_EXTRA_CA_CERTS. */
function httpsStatus(url: string, ca: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request(url, { ca, timeout: 5_000 }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on("timeout", () => req.destroy(new Error("timeout")));
    req.on("error", reject);
    req.end();
  });
}

/** The environment without any CA of the caller's, plus `extra`. */
function envWith(extra: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, ...extra };
  if (extra.NODE_EXTRA_CA_CERTS === undefined) delete env.NODE_EXTRA_CA_CERTS;
  return env;
}

beforeAll(async () => {
  assertBuilt();
  cluster = await Cluster.start();
  certFile = path.join(cluster.dir, "cert.pem");
  // The README's certificate commands, run as written but for the host's name.
  const readme = readFileSync(path.join(ROOT, "README.md"), "utf8");
  const section = readme.slice(readme.indexOf("## Running it on several machines"), readme.indexOf("## Running several coordinators"));
  const openssl = /^openssl req [^\n]*\\\n[^\n]*$/m.exec(section)?.[0];
  const cat = /^cat cert\.pem key\.pem > aitbc\.pem[^\n#]*/m.exec(section)?.[0];
  expect(openssl).toBeDefined();
  expect(cat).toBeDefined();
  await run("bash", ["-euc", `${openssl!.replaceAll("coordinator.example", "localhost")}\n${cat!}`], { cwd: cluster.dir });
  const pem = path.join(cluster.dir, "aitbc.pem");
  tlsPort = await freePort();
  const config = path.join(ROOT, "config", "haproxy-tls.cfg");
  const env = { ...process.env, AITBC_TLS_BIND: `127.0.0.1:${tlsPort}`, AITBC_TLS_PEM: pem, AITBC_COORDINATOR: `127.0.0.1:${cluster.port}` };
  await run("haproxy", ["-c", "-f", config], { env });
  haproxy = spawn("haproxy", ["-db", "-f", config], { env, stdio: ["ignore", "pipe", "pipe"] });
  haproxy.on("error", (err) => (haproxyOutput += `haproxy did not start: ${err.message} (install it: apt-get install haproxy)\n`));
  haproxy.stdout!.on("data", (d: Buffer) => (haproxyOutput += d.toString()));
  haproxy.stderr!.on("data", (d: Buffer) => (haproxyOutput += d.toString()));
  const ca = readFileSync(certFile, "utf8");
  await waitFor("haproxy answering over https", () => httpsStatus(`https://localhost:${tlsPort}/readyz`, ca), (s) => s === 200, 20_000, 100);
}, 60_000);

afterAll(async (ctx) => {
  if (ctx.tasks.some((t) => t.result?.state === "fail")) console.error(`${cluster?.tails() ?? ""}\n--- haproxy ---\n${haproxyOutput}`);
  haproxy?.kill("SIGKILL");
  await cluster?.close();
});

describe("TLS through HAProxy (config/haproxy-tls.cfg)", () => {
  it("a miner connects over wss:// and a job submitted over https:// completes, both trusting the certificate via NODE_EXTRA_CA_CERTS", async () => {
    const { proc: miner } = await cluster.startMiner({
      name: "tls-rig",
      fakeTokensPerSecond: 200,
      coordinatorUrl: `wss://localhost:${tlsPort}`,
      env: { NODE_EXTRA_CA_CERTS: certFile },
    });
    const { stdout } = await run(
      process.execPath,
      [CLI, "jobs", "submit", "--model", "tiny-gpt2", "--input", "over TLS", "--max-new-tokens", "8", "--wait"],
      // As the README's client does it: the URL, key and CA from the environment.
      { cwd: cluster.dir, env: envWith({ NODE_EXTRA_CA_CERTS: certFile, AITBC_URL: `https://localhost:${tlsPort}`, AITBC_KEY: cluster.clientKey }), timeout: 30_000 },
    );
    expect(stdout.trim().length).toBeGreaterThan(0);
    const list = await cluster.api<{ jobs: { job_id: string; status: string }[] }>("GET", "/v1/jobs?limit=10");
    expect(list.body.jobs.map((j) => j.status)).toEqual(["completed"]);
    // The miner dialled the proxy's wss:// address, not the coordinator's own port.
    const dialled = miner.logs().filter((l) => l.msg === "connecting to coordinator").map((l) => l.url);
    expect(dialled).toEqual([`wss://localhost:${tlsPort}/v1/miners/connect`]);
  }, 60_000);

  it("doctor's coordinator check passes over wss:// with the certificate trusted, and fails without", async () => {
    const keyFile = path.join(cluster.dir, "miner.key");
    writeFileSync(keyFile, `${cluster.minerKey}\n`, { mode: 0o600 });
    const coordinatorCheck = async (env: NodeJS.ProcessEnv): Promise<{ status: string; summary: string } | undefined> => {
      const args = [CLI, "doctor", "--json", "-c", path.join(cluster.dir, "miner.toml"), "--coordinator", `wss://localhost:${tlsPort}`, "--key-file", keyFile];
      // Exit 1 here for the checks of this host (no GPU, no CUDA provider); only the coordinator's matters.
      const out = await run(process.execPath, args, { cwd: ROOT, env, timeout: 30_000 }).then(
        (r) => r.stdout,
        (e: unknown) => (e as { stdout: string }).stdout,
      );
      const report = JSON.parse(out) as { checks: { name: string; status: string; summary: string }[] };
      return report.checks.find((c) => c.name === "coordinator");
    };
    expect(await coordinatorCheck(envWith({ NODE_EXTRA_CA_CERTS: certFile }))).toMatchObject({ status: "ok" });
    expect(await coordinatorCheck(envWith({}))).toMatchObject({ status: "fail", summary: expect.stringMatching(/certificate/) as unknown });
  }, 60_000);

  it("a miner that does not trust the certificate logs the TLS error and keeps retrying, never connecting", async () => {
    const miner = spawn(
      process.execPath,
      [CLI, "miner", "-c", path.join(cluster.dir, "miner.toml"), "--coordinator", `wss://localhost:${tlsPort}`, "--name", "untrusting-rig", "--cpu"],
      {
        cwd: ROOT,
        env: envWith({
          AITBC_MINER_COORDINATOR_KEY: cluster.minerKey,
          AITBC_MINER_COORDINATOR_RECONNECT_MIN: "100ms",
          AITBC_MINER_COORDINATOR_RECONNECT_MAX: "200ms",
          AITBC_MINER_FAKE_ENGINE_ENABLED: "true",
          AITBC_MINER_LOG_FORMAT: "json",
        }),
        stdio: ["ignore", "pipe", "pipe"],
      },
    );
    let out = "";
    miner.stdout.on("data", (d: Buffer) => (out += d.toString()));
    miner.stderr.on("data", (d: Buffer) => (out += d.toString()));
    try {
      const errors = (): string[] =>
        out
          .split("\n")
          .filter((l) => l.includes('"msg":"connection error"'))
          .map((l) => (JSON.parse(l) as { err: string }).err);
      const seen = await waitFor("two connection errors", () => Promise.resolve(errors()), (e) => e.length >= 2, 20_000, 100);
      expect(seen[0]).toMatch(/self-signed certificate/);
      expect(cluster.connectedCount("untrusting-rig")).toBe(0);
    } finally {
      miner.kill("SIGKILL");
    }
  }, 60_000);

  it("without the certificate trusted, the CLI refuses the connection and submits nothing", async () => {
    const before = (await cluster.api<{ jobs: unknown[] }>("GET", "/v1/jobs?limit=10")).body.jobs.length;
    const err = await run(
      process.execPath,
      [CLI, "jobs", "submit", "--url", `https://localhost:${tlsPort}`, "--key", cluster.clientKey, "--model", "tiny-gpt2", "--input", "untrusted"],
      { cwd: cluster.dir, env: envWith({}), timeout: 30_000 },
    ).then(
      () => undefined,
      (e: unknown) => e as { code?: number; stderr?: string },
    );
    expect(err).toBeDefined();
    expect(err!.code).toBe(69);
    expect(err!.stderr).toMatch(/DEPTH_ZERO_SELF_SIGNED_CERT .*not trusted: set NODE_EXTRA_CA_CERTS/);
    expect((await cluster.api<{ jobs: unknown[] }>("GET", "/v1/jobs?limit=10")).body.jobs.length).toBe(before);
  }, 60_000);
});
