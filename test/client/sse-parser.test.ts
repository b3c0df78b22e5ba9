import { describe, expect, it } from "vitest";
import { SseParser } from "../../src/client/sse-parser.js";

const STREAM =
  ": keepalive\n\n" +
  "event: snapshot\ndata: {\"a\":1}\n\n" +
  "id: 3\nevent: running\ndata: {\"b\":2}\n\n" +
  "event: progress\ndata: line one\ndata:line two\n\n" +
  "event: empty\n\n" +
  "data: plain\n\n";

describe("SseParser", () => {
  it("parses events, ids, multi-line data and skips comments and data-less events", () => {
    const p = new SseParser();
    expect(p.push(STREAM)).toEqual([
      { event: "snapshot", data: '{"a":1}', id: undefined },
      { event: "running", data: '{"b":2}', id: "3" },
      { event: "progress", data: "line one\nline two", id: undefined },
      { event: "message", data: "plain", id: undefined },
    ]);
    expect(p.lastEventId).toBe("3");
  });

  it("gives the same events however the text is split, with LF, CRLF or CR line ends", () => {
    for (const eol of ["\n", "\r\n", "\r"]) {
      const text = STREAM.replace(/\n/g, eol);
      const whole = new SseParser().push(text);
      expect(whole).toHaveLength(4);
      for (const size of [1, 2, 3, 7]) {
        const p = new SseParser();
        const got = [];
        for (let i = 0; i < text.length; i += size) got.push(...p.push(text.slice(i, i + size)));
        expect(got, `eol ${JSON.stringify(eol)} chunk ${size}`).toEqual(whole);
      }
    }
  });

  it("keeps an incomplete event until its blank line arrives", () => {
    const p = new SseParser();
    expect(p.push("id: 9\nevent: completed\ndata: {}\n")).toEqual([]);
    expect(p.push("\n")).toEqual([{ event: "completed", data: "{}", id: "9" }]);
  });
});

describe("SseParser limits", () => {
  it("dispatches at a CR that ends a chunk, without waiting for the next one", () => {
    const p = new SseParser();
    expect(p.push("data: x\r\r")).toEqual([{ event: "message", data: "x", id: undefined }]);
    expect(p.push("\ndata: y\r\n\r\n")).toEqual([{ event: "message", data: "y", id: undefined }]);
  });

  it("refuses an event larger than its limit instead of buffering it", () => {
    const p = new SseParser(64);
    expect(p.push(`data: ${"a".repeat(40)}\n`)).toEqual([]);
    let thrown: unknown;
    try {
      p.push(`data: ${"b".repeat(40)}\n`);
    } catch (err) {
      thrown = err;
    }
    expect(thrown).toMatchObject({ code: "event_too_large", retryable: false });
    expect(() => p.push("\n")).toThrow(/larger than 64 characters/);
  });
});
