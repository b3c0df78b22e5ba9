import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadCoordinatorConfig } from "../../src/coordinator/config.js";
import { S3ResultStore, SWEEP_MIN_AGE_MS } from "../../src/coordinator/results/s3-result-store.js";
import { startS3 } from "./s3-server.js";

/** The S3 result store against a real S3-compatible server: exact bytes, one object per copy, a sweep that spares young objects. */
let s3: Awaited<ReturnType<typeof startS3>>;
let store: S3ResultStore;
let clock = Date.now();

beforeAll(async () => {
  s3 = await startS3(["results"]);
  const config = loadCoordinatorConfig(undefined, {
    optional: true,
    env: {},
    overrides: { "s3.endpoint": s3.endpoint, "s3.access_key_id": "S3RVER", "s3.secret_access_key": "S3RVER" },
  });
  store = new S3ResultStore(config.s3, "results", "p/", () => clock);
});

afterAll(async () => {
  store.close();
  await s3.close();
});

describe("S3ResultStore", () => {
  it("stores each copy as its own object and reads the exact bytes back", async () => {
    const bytes = Buffer.from("naïve ☕ output");
    const a = await store.put("job_abc", 1, bytes);
    const b = await store.put("job_abc", 1, bytes);
    expect(a.location).not.toBe(b.location);
    expect(a).toMatchObject({ bytes: bytes.length });
    expect((await store.read(a.location)).equals(bytes)).toBe(true);
    await store.remove(b.location);
    await expect(store.read(b.location)).rejects.toThrow();
  });

  it("the sweep removes only objects that no committed result points to and that are old enough not to be another replica's in flight", async () => {
    const committed = await store.put("job_kept", 1, Buffer.from("committed"));
    const orphan = await store.put("job_kept", 2, Buffer.from("a copy that lost"));
    const unknown = await store.put("job_unknown", 1, Buffer.from("a job the store does not know"));
    const pointers = (jobId: string): Promise<string | null | undefined> => Promise.resolve(jobId === "job_kept" ? committed.location : jobId === "job_abc" ? null : undefined);
    // Just written: nothing is old enough.
    expect(await store.sweep(pointers)).toEqual({ removed: 0, unknown: 0 });
    clock += SWEEP_MIN_AGE_MS + 60_000;
    const swept = await store.sweep(pointers);
    expect(swept.removed).toBeGreaterThanOrEqual(1);
    await expect(store.read(orphan.location)).rejects.toThrow();
    expect((await store.read(committed.location)).toString()).toBe("committed");
    expect((await store.read(unknown.location)).toString()).toBe("a job the store does not know");
  });
});
