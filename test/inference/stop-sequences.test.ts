import { describe, expect, it } from "vitest";
import { IncrementalDecoder } from "../../src/inference/incremental-decoder.js";
import { StopSequenceMatcher } from "../../src/inference/stop-sequences.js";

/** Feeds pieces through a matcher and returns the emitted text and whether it stopped. */
function run(stops: string[], pieces: string[]): { text: string; stopped: boolean; deltas: string[] } {
  const m = new StopSequenceMatcher(stops);
  const deltas: string[] = [];
  for (const p of pieces) {
    const r = m.push(p);
    deltas.push(r.delta);
    if (r.stopped) return { text: deltas.join(""), stopped: true, deltas };
  }
  deltas.push(m.flush());
  return { text: deltas.join(""), stopped: false, deltas };
}

describe("StopSequenceMatcher", () => {
  it("cuts exactly before a stop sequence inside one piece", () => {
    expect(run(["\n\n"], ["Hello", " world\n\nmore"])).toMatchObject({ text: "Hello world", stopped: true });
  });

  it("cuts a stop sequence spread over several pieces and holds back its start meanwhile", () => {
    const r = run(["END"], ["abc E", "N", "D tail"]);
    expect(r).toMatchObject({ text: "abc ", stopped: true });
    // "E" and "EN" were held back, never emitted and taken back.
    expect(r.deltas).toEqual(["abc ", "", ""]);
  });

  it("releases held-back text that turned out not to be a stop sequence", () => {
    const r = run(["END"], ["abc E", "Nx", " more"]);
    expect(r).toMatchObject({ text: "abc ENx more", stopped: false });
    expect(r.deltas[0]).toBe("abc ");
  });

  it("releases a trailing prefix at the end", () => {
    expect(run(["END"], ["abc EN"])).toMatchObject({ text: "abc EN", stopped: false });
  });

  it("stops at the earliest of several stop sequences", () => {
    expect(run(["world", "lo"], ["hello world"])).toMatchObject({ text: "hel", stopped: true });
  });

  it("a stop sequence at the very start gives empty text", () => {
    expect(run(["."], [".abc"])).toMatchObject({ text: "", stopped: true });
  });

  it("passes everything through without stop sequences", () => {
    expect(run([], ["a", "b"])).toMatchObject({ text: "ab", stopped: false, deltas: ["a", "b", ""] });
  });
});

describe("IncrementalDecoder", () => {
  // Toy byte-level vocabulary: each id is one UTF-8 byte, like GPT-2's byte fallback.
  const decode = (ids: readonly number[]): string => new TextDecoder().decode(Uint8Array.from(ids));

  it("holds back an incomplete multi-byte character until it is complete", () => {
    const d = new IncrementalDecoder(decode);
    const bytes = [...new TextEncoder().encode("aé€b")];
    const deltas = bytes.map((b) => d.push(b));
    expect(deltas).toEqual(["a", "", "é", "", "", "€", "b"]);
    expect(deltas.join("") + d.flush()).toBe("aé€b");
  });

  it("flushes an incomplete character as U+FFFD at the end", () => {
    const d = new IncrementalDecoder(decode);
    const euro = [...new TextEncoder().encode("€")];
    expect(d.push(0x61) + d.push(euro[0]!) + d.flush()).toBe("a\uFFFD");
  });
});
