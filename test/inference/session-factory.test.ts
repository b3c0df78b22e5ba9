import { spawn, type ChildProcess } from "node:child_process";
import { availableParallelism } from "node:os";
import { afterEach, describe, expect, it } from "vitest";
import { decideThreadSpinning, othersLoadBetween, otherProcessesCpuLoad, resolveThreadSpinning, SPIN_OTHERS_LIMIT } from "../../src/inference/session-factory.js";

describe("resolveThreadSpinning", () => {
  it("follows an explicit setting whatever the load", () => {
    expect(resolveThreadSpinning(true, 40)).toBe(true);
    expect(resolveThreadSpinning(false, 0)).toBe(false);
  });

  it("auto spins only while other processes use under half a CPU", () => {
    expect(resolveThreadSpinning("auto", 0)).toBe(true);
    expect(resolveThreadSpinning("auto", 0.49)).toBe(true);
    expect(resolveThreadSpinning("auto", SPIN_OTHERS_LIMIT)).toBe(false);
    expect(resolveThreadSpinning(undefined, 15)).toBe(false);
  });
});

describe("other processes' CPU load", () => {
  it("leaves this process's own time out", () => {
    // 1000 ms apart: 1500 ms busy on all CPUs, of which 1200 ms were this process's threads.
    expect(othersLoadBetween({ busyMs: 10_000, ownMs: 300 }, { busyMs: 11_500, ownMs: 1_500 }, 1000)).toBeCloseTo(0.3, 10);
    // Own time counted by another clock can exceed the busy total a little: never below 0.
    expect(othersLoadBetween({ busyMs: 0, ownMs: 0 }, { busyMs: 100, ownMs: 140 }, 1000)).toBe(0);
    expect(othersLoadBetween({ busyMs: 0, ownMs: 0 }, { busyMs: 100, ownMs: 0 }, 0)).toBe(0);
  });

  const children: ChildProcess[] = [];
  afterEach(() => {
    for (const c of children.splice(0)) c.kill("SIGKILL");
  });

  it("sees busy child processes, and auto then does not spin", async () => {
    // One busy loop per CPU: whatever else runs, other processes then use well over one CPU.
    for (let i = 0; i < availableParallelism(); i++) {
      const child = spawn(process.execPath, ["-e", "process.send('up'); for (;;) {}"], { stdio: ["ignore", "ignore", "ignore", "ipc"] });
      children.push(child);
      await new Promise((resolve) => child.once("message", resolve));
    }
    expect(await otherProcessesCpuLoad(400)).toBeGreaterThan(Math.min(1, SPIN_OTHERS_LIMIT * 2));
    const decided = await decideThreadSpinning("auto");
    expect(decided.spinning).toBe(false);
    expect(decided.othersCpuLoad).toBeGreaterThanOrEqual(SPIN_OTHERS_LIMIT);
    expect(await decideThreadSpinning(true)).toEqual({ spinning: true });
  });
});
