import { describe, expect, it } from "vitest";
import { didYouMean } from "../../src/common/did-you-mean.js";

describe("didYouMean", () => {
  const keys = ["port", "host", "body_limit", "lease_ttl", "heartbeat", "max_attempts", "request_timeout", "headers_timeout"];
  it("finds the key a typo, a swap, a case or dash slip, or an added unit meant", () => {
    expect(didYouMean("prot", keys)).toBe("port");
    expect(didYouMean("hearbeat", keys)).toBe("heartbeat");
    expect(didYouMean("max_atempts", keys)).toBe("max_attempts");
    expect(didYouMean("Body-Limit", keys)).toBe("body_limit");
    expect(didYouMean("lease_ttl_ms", keys)).toBe("lease_ttl");
    expect(didYouMean("header_timeout", keys)).toBe("headers_timeout");
  });
  it("suggests nothing for a name close to no key", () => {
    expect(didYouMean("colour", keys)).toBeUndefined();
    expect(didYouMean("x", keys)).toBeUndefined();
    expect(didYouMean("prt", [])).toBeUndefined();
  });
});
