import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { terminalLine, terminalText } from "../../src/client/terminal-text.js";

describe("terminal text", () => {
  it("shows escape sequences, C1 controls and bidi overrides as visible escapes", () => {
    expect(terminalText("ok \u001b[2J\u001b]0;pwned\u0007 done")).toBe("ok \\x1b[2J\\x1b]0;pwned\\x07 done");
    expect(terminalText("\u009b31m red")).toBe("\\x9b31m red");
    expect(terminalText("abc\u202edcba")).toBe("abc\\u202edcba");
    expect(terminalText("cr\roverwrites")).toBe("cr\\roverwrites");
    expect(terminalText("zero\u200bwidth\ufeff")).toBe("zero\\u200bwidth\\ufeff");
  });

  it("keeps newlines and tabs in a block, escapes them on one line, and leaves printable text alone", () => {
    expect(terminalText("line one\n\tline two")).toBe("line one\n\tline two");
    expect(terminalLine("line one\n\tline two")).toBe("line one\\n\\tline two");
    expect(terminalText("naïve café ☕ 🚀 日本語")).toBe("naïve café ☕ 🚀 日本語");
  });

  it("never lets a control character through, whatever the input", () => {
    fc.assert(
      fc.property(fc.string({ unit: "binary", maxLength: 200 }), (s) => {
         
        expect(terminalLine(s)).not.toMatch(/[\u0000-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/u);
         
        expect(terminalText(s)).not.toMatch(/[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/u);
      }),
      { numRuns: 500 },
    );
  });
});
