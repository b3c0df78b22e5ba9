import { describe, expect, it } from "vitest";
import { coalesced } from "../../src/common/coalesced.js";

/** A promise and the function that settles it. */
function gate(): { promise: Promise<void>; open: () => void } {
  let open: () => void = () => undefined;
  const promise = new Promise<void>((resolve) => (open = resolve));
  return { promise, open };
}

describe("coalesced", () => {
  it("folds the calls made during a run into one more run after it", async () => {
    const gates = [gate(), gate()];
    let runs = 0;
    const run = coalesced(async () => {
      await gates[runs++]!.promise;
    });
    const first = run();
    // Three calls while the first run waits: one run more, not three.
    await Promise.all([run(), run(), run()]);
    expect(runs).toBe(1);
    gates[0]!.open();
    await new Promise((r) => setImmediate(r));
    expect(runs).toBe(2);
    gates[1]!.open();
    await first;
    expect(runs).toBe(2);
    // Idle again: the next call runs at once.
    const third = gate();
    gates.push(third);
    third.open();
    await run();
    expect(runs).toBe(3);
  });

  it("ends for good when a run returns true, and gives a failed run's error to the call that started it", async () => {
    let runs = 0;
    let fail = true;
    const run = coalesced(async () => {
      runs += 1;
      if (fail) throw new Error("read failed");
      return runs >= 3;
    });
    await expect(run()).rejects.toThrow("read failed");
    fail = false;
    await run();
    await run();
    expect(runs).toBe(3);
    await run();
    expect(runs).toBe(3);
  });
});
