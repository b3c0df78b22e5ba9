import { describe, expect, it } from "vitest";
import { startApi, submit } from "./api-harness.js";

describe("event streams and shutdown", () => {
  it("stopping the coordinator ends open event streams instead of waiting for their jobs", async () => {
    const h = await startApi();
    const jobId = await submit(h);
    const res = await h.call("GET", `/v1/jobs/${jobId}/events`);
    expect(res.status).toBe(200);
    const reader = res.body!.getReader();
    const chunk: Uint8Array | undefined = (await reader.read()).value;
    const first = new TextDecoder().decode(chunk);
    expect(first).toContain("event: snapshot");

    const stopped = h.stop().then(() => "stopped" as const);
    const hung = new Promise<"hung">((resolve) => setTimeout(() => resolve("hung"), 20_000).unref());
    expect(await Promise.race([stopped, hung])).toBe("stopped");
    let done = false;
    while (!done) done = (await reader.read()).done;
    expect(done).toBe(true);
  });
});
