import { describe, expect, it, vi } from "vitest";
import { TEXT_FRAME_MAX_CHARS, type TextFrame } from "../../src/protocol/frames.js";
import { TextStream } from "../../src/miner/text-stream.js";

const ref = { job_id: "job_1", attempt: 1, lease_token: "lt_1" };
const joined = (frames: TextFrame[]): string => frames.reduce((t, f) => t.slice(0, f.index) + f.delta, "");

describe("TextStream (protocol 4 text frames)", () => {
  it("coalesces tokens: a frame per max_tokens tokens at high speed, the deltas add up to the text", () => {
    vi.useFakeTimers();
    try {
      const frames: TextFrame[] = [];
      const s = new TextStream(ref, { send: (f) => frames.push(f) > 0, intervalMs: 50, maxTokens: 16 });
      let text = "";
      for (let i = 1; i <= 100; i++) {
        const piece = i % 7 === 0 ? "" : ` w${i}`;
        text += piece;
        s.push(piece, i, 500);
      }
      s.flush();
      // The first token goes at once (nothing sent yet), then one frame per 16 tokens, then the flush.
      expect(frames.length).toBe(1 + Math.floor(99 / 16) + 1);
      expect(joined(frames)).toBe(text);
      expect(frames.at(-1)).toMatchObject({ type: "text", ...ref, tokens: 100, tokens_per_s: 500 });
      expect(frames.every((f, i) => i === 0 || f.index === frames[i - 1]!.index + frames[i - 1]!.delta.length)).toBe(true);
    } finally {
      vi.useRealTimers();
    }
  });

  it("sends waiting text after the interval even when no more tokens come", () => {
    vi.useFakeTimers();
    try {
      const frames: TextFrame[] = [];
      const s = new TextStream(ref, { send: (f) => frames.push(f) > 0, intervalMs: 50, maxTokens: 16 });
      s.push("a", 1, 1);
      s.push("b", 2, 1);
      expect(frames.map((f) => f.delta)).toEqual(["a"]);
      vi.advanceTimersByTime(50);
      expect(frames.map((f) => f.delta)).toEqual(["a", "b"]);
      s.close();
    } finally {
      vi.useRealTimers();
    }
  });

  it("resends the whole text from index 0, in frames that never split a surrogate pair", () => {
    const frames: TextFrame[] = [];
    let up = true;
    const s = new TextStream(ref, { send: (f) => up && frames.push(f) > 0, intervalMs: 0, maxTokens: 1 });
    const emoji = "\u{1F600}";
    const long = "x".repeat(TEXT_FRAME_MAX_CHARS - 1) + emoji + "tail";
    s.push(long, 1, 1);
    up = false;
    s.push(" lost", 2, 1);
    up = true;
    frames.length = 0;
    s.resend();
    expect(frames[0]!.index).toBe(0);
    expect(frames.length).toBe(2);
    expect(frames[0]!.delta.length).toBe(TEXT_FRAME_MAX_CHARS - 1);
    expect(frames[1]!.delta.startsWith(emoji)).toBe(true);
    expect(joined(frames)).toBe(`${long} lost`);
  });
});
