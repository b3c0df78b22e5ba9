import { describe, expect, it } from "vitest";
import { resolveThreadSpinning } from "../../src/inference/session-factory.js";

describe("resolveThreadSpinning", () => {
  it("follows an explicit setting whatever the load", () => {
    expect(resolveThreadSpinning(true, 40, 2)).toBe(true);
    expect(resolveThreadSpinning(false, 0, 16)).toBe(false);
  });

  it("auto spins only while the CPUs are mostly idle", () => {
    expect(resolveThreadSpinning("auto", 0.2, 2)).toBe(true);
    expect(resolveThreadSpinning("auto", 1.4, 2)).toBe(true);
    expect(resolveThreadSpinning("auto", 1.5, 2)).toBe(false);
    expect(resolveThreadSpinning("auto", 15, 2)).toBe(false);
    expect(resolveThreadSpinning(undefined, 15, 16)).toBe(true);
  });
});
