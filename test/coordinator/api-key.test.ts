import { describe, expect, it } from "vitest";
import { newApiKey, parseApiKey, verifiedKey } from "../../src/coordinator/auth/api-key.js";
import type { ApiKeyRecord } from "../../src/coordinator/store/job-store.js";

function rowFor(secretHash: Buffer): { secret_hash: Buffer } {
  return { secret_hash: secretHash };
}

describe("verifiedKey", () => {
  const k = newApiKey("client");
  const secret = parseApiKey(k.key, "client")!.secret;
  const other = parseApiKey(newApiKey("client").key, "client")!.secret;
  let built = 0;
  const record = (): ApiKeyRecord => {
    built += 1;
    return { id: k.id, kind: "client", name: "n", tenant: "acme", createdAt: 0, revokedAt: null };
  };

  it("answers the record for the secret of the row's hash, and null for any other, before and after a match", () => {
    const row = rowFor(k.secretHash);
    expect(verifiedKey(row, other, record)).toBeNull();
    const first = verifiedKey(row, secret, record);
    expect(first).toMatchObject({ id: k.id, tenant: "acme" });
    expect(Object.isFrozen(first)).toBe(true);
    // Remembered for this row: the same record, not built again; a wrong secret is still refused.
    expect(verifiedKey(row, secret, record)).toBe(first);
    expect(built).toBe(1);
    expect(verifiedKey(row, other, record)).toBeNull();
    expect(verifiedKey(row, `${secret.slice(0, 31)}${secret.endsWith("x") ? "y" : "x"}`, record)).toBeNull();
  });

  it("a row read again (another object) is checked against its hash again", () => {
    const before = built;
    expect(verifiedKey(rowFor(k.secretHash), secret, record)).not.toBeNull();
    expect(built).toBe(before + 1);
    // A row whose hash changed (another key with the same id) does not accept the old secret.
    expect(verifiedKey(rowFor(newApiKey("client").secretHash), secret, record)).toBeNull();
  });
});
