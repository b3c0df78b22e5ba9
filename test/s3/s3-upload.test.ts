import { createHash } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { GetObjectCommand, S3Client } from "@aws-sdk/client-s3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { expectProblem, startApi, submit, type ApiHarness } from "../coordinator/api-harness.js";

interface S3rverInstance {
  run(): Promise<{ address: string; port: number }>;
  close(): Promise<void>;
}
type S3rverCtor = new (opts: Record<string, unknown>) => S3rverInstance;
// s3rver ships no types; only its constructor, run() and close() are used.
const S3rver = createRequire(import.meta.url)("s3rver") as S3rverCtor;

let server: S3rverInstance;
let endpoint = "";
let s3dir = "";

async function closedPort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

const s3 = (ep: string): Record<string, unknown> => ({
  endpoint: ep,
  access_key_id: "S3RVER",
  secret_access_key: "S3RVER",
  upload_attempts: 3,
  upload_backoff: "10ms",
  upload_backoff_max: "50ms",
});
const tenants = { acme: { s3_buckets: ["results", "missing-bucket"] } };

async function getObject(bucket: string, key: string): Promise<Buffer> {
  const client = new S3Client({
    endpoint,
    region: "us-east-1",
    forcePathStyle: true,
    credentials: { accessKeyId: "S3RVER", secretAccessKey: "S3RVER" },
    requestChecksumCalculation: "WHEN_REQUIRED",
  });
  try {
    const out = await client.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
    return Buffer.from(await out.Body!.transformToByteArray());
  } finally {
    client.destroy();
  }
}

interface Status {
  status: string;
  result: { destination: string; upload?: { state: string; uri?: string; error?: { code: string; message: string }; attempts?: number } } | null;
}

async function status(h: ApiHarness, id: string): Promise<Status> {
  const res = await h.call("GET", `/v1/jobs/${id}`);
  expect(res.status).toBe(200);
  return (await res.json()) as Status;
}

beforeAll(async () => {
  s3dir = mkdtempSync(path.join(os.tmpdir(), "aitbc-s3rver-"));
  server = new S3rver({ port: 0, address: "127.0.0.1", silent: true, directory: s3dir, configureBuckets: [{ name: "results" }] });
  const { port } = await server.run();
  endpoint = `http://127.0.0.1:${port}`;
});

afterAll(async () => {
  await server.close();
  rmSync(s3dir, { recursive: true, force: true });
});

describe("s3:// destinations", () => {
  it("uploads the exact download bytes under <prefix>/<job_id>.<ext> and shows the URI", async () => {
    const h = await startApi({ tenants, s3: s3(endpoint) });
    try {
      const id = await submit(h, { output_config: { destination: "s3://results/out//batch-1/", format: "json" } });
      await h.complete(id, "The answer is 42.");
      await h.coordinator.uploader.idle();
      const dl = await h.call("GET", `/v1/jobs/${id}/download`);
      expect(dl.status).toBe(200);
      const bytes = Buffer.from(await dl.arrayBuffer());
      const obj = await getObject("results", `out/batch-1/${id}.json`);
      expect(obj.equals(bytes)).toBe(true);
      expect(createHash("sha256").update(obj).digest("hex")).toBe(createHash("sha256").update(bytes).digest("hex"));
      expect((JSON.parse(obj.toString("utf8")) as { output: string }).output).toBe("The answer is 42.");
      const st = await status(h, id);
      expect(st.status).toBe("completed");
      expect(st.result?.destination).toBe(`s3://results/out/batch-1/${id}.json`);
      expect(st.result?.upload).toMatchObject({ state: "uploaded", uri: `s3://results/out/batch-1/${id}.json` });

      const textId = await submit(h, { output_config: { destination: "s3://results", format: "text" } });
      await h.complete(textId, "plain text out");
      await h.coordinator.uploader.idle();
      expect((await getObject("results", `${textId}.txt`)).toString("utf8")).toBe("plain text out");

      const refused = await h.call("POST", "/v1/jobs", { json: { model: "gpt2", input: "x", output_config: { destination: "s3://other-bucket/p" } } });
      await expectProblem(refused, 422, "s3_bucket_not_allowed");
    } finally {
      await h.stop();
    }
  });

  it("records a bucket the server refuses without retrying it; the job stays completed", async () => {
    const h = await startApi({ tenants, s3: s3(endpoint) });
    try {
      const id = await submit(h, { output_config: { destination: "s3://missing-bucket/p" } });
      await h.complete(id, "out");
      await h.coordinator.uploader.idle();
      const st = await status(h, id);
      expect(st.status).toBe("completed");
      expect(st.result?.upload?.state).toBe("failed");
      expect(st.result?.upload?.error?.message).toMatch(/NoSuchBucket/);
      // A 404 from the server cannot get better by retrying: one attempt of the three allowed.
      expect(st.result?.upload?.attempts).toBe(1);
    } finally {
      await h.stop();
    }
  });

  it("server down: retries, records the failure, download works; a restart re-drives it", async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), "aitbc-s3-api-"));
    try {
      const a = await startApi({ tenants, s3: s3(`http://127.0.0.1:${await closedPort()}`) }, dir);
      let id: string;
      try {
        id = await submit(a, { output_config: { destination: "s3://results/later" } });
        await a.complete(id, "kept locally");
        await a.coordinator.uploader.idle();
        const st = await status(a, id);
        expect(st.status).toBe("completed");
        expect(st.result?.destination).toBe("s3://results/later");
        expect(st.result?.upload).toMatchObject({ state: "failed", attempts: 3, error: { code: "s3_upload_failed" } });
        expect(st.result?.upload?.error?.message).toMatch(/ECONNREFUSED/);
        const dl = await a.call("GET", `/v1/jobs/${id}/download`);
        expect(dl.status).toBe(200);
        expect(((await dl.json()) as { output: string }).output).toBe("kept locally");
        const events = await a.coordinator.store.listEvents(id, 0);
        expect(events.map((e) => e.type)).toContain("upload_failed");
      } finally {
        await a.stop();
      }
      const b = await startApi({ tenants, s3: s3(endpoint) }, dir);
      try {
        await b.coordinator.uploader.idle();
        const st = await status(b, id);
        expect(st.result?.upload).toMatchObject({ state: "uploaded", uri: `s3://results/later/${id}.json` });
        expect(((JSON.parse((await getObject("results", `later/${id}.json`)).toString("utf8"))) as { output: string }).output).toBe("kept locally");
      } finally {
        await b.stop();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
