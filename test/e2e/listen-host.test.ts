import { networkInterfaces } from "node:os";
import { afterEach, describe, expect, it } from "vitest";
import { Cluster, assertBuilt } from "./cluster.js";

/**
 * config/coordinator.toml's `host` hint: the default 127.0.0.1 is not reachable on this host's
 * LAN address (where a remote miner would dial), and "0.0.0.0" is. The LAN address stands in
 * for another host: one machine has no second one.
 */
function lanAddress(): string {
  const found = Object.values(networkInterfaces())
    .flat()
    .find((a) => a !== undefined && a.family === "IPv4" && !a.internal);
  if (found === undefined) throw new Error("this host has no non-loopback IPv4 address to stand in for a remote host");
  return found.address;
}

async function reachable(url: string): Promise<boolean> {
  try {
    return (await fetch(url, { signal: AbortSignal.timeout(5_000) })).status === 200;
  } catch {
    return false;
  }
}

let cluster: Cluster | undefined;
afterEach(async () => {
  await cluster?.close();
  cluster = undefined;
});

describe("[server] host", () => {
  it("127.0.0.1 (the default) takes no connection on the LAN address", async () => {
    assertBuilt();
    cluster = await Cluster.start();
    expect(await reachable(`http://127.0.0.1:${cluster.port}/healthz`)).toBe(true);
    expect(await reachable(`http://${lanAddress()}:${cluster.port}/healthz`)).toBe(false);
  }, 60_000);

  it('"0.0.0.0" (the hint for remote miners) takes a miner and clients on the LAN address', async () => {
    assertBuilt();
    cluster = await Cluster.start({ AITBC_COORDINATOR_SERVER_HOST: "0.0.0.0" });
    const lan = `http://${lanAddress()}:${cluster.port}`;
    expect(await reachable(`${lan}/healthz`)).toBe(true);
    await cluster.startMiner({ name: "lan-rig", fakeTokensPerSecond: 200, coordinatorUrl: lan.replace(/^http/, "ws") });
    const id = await cluster.submit({ model: "tiny-gpt2", input: "over the LAN", parameters: { max_new_tokens: 4 } });
    expect(await cluster.waitForJob(id, (j) => j.status === "completed", "completed")).toMatchObject({ status: "completed" });
  }, 60_000);
});
