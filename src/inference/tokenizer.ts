import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import type { PreTrainedTokenizer } from "@xenova/transformers";
import { ModelError, errorMessage } from "../common/errors.js";

/**
 * The runtime tokenizer: transformers.js's AutoTokenizer loaded offline from a model folder
 * (tokenizer.json + tokenizer_config.json), so our own models and real exports tokenize
 * exactly as Hugging Face does. transformers.js is imported lazily because importing it also
 * loads its own onnxruntime-node.
 */
export class Tokenizer {
  private constructor(
    private readonly inner: PreTrainedTokenizer,
    /** Id that ends a sequence (`<|endoftext|>` = 50256 for GPT-2). */
    readonly eosTokenId: number,
  ) {}

  static async load(dir: string): Promise<Tokenizer> {
    const abs = path.resolve(dir);
    for (const file of ["tokenizer.json", "tokenizer_config.json"]) {
      if (!existsSync(path.join(abs, file))) throw new ModelError("model_file_missing", "the model folder has no tokenizer file", { dir: abs, file });
    }
    const { AutoTokenizer, env } = await import("@xenova/transformers");
    env.allowRemoteModels = false;
    env.allowLocalModels = true;
    // transformers.js joins localModelPath and the id; "/" plus an absolute path is that path.
    env.localModelPath = "/";
    let inner: PreTrainedTokenizer;
    try {
      inner = await AutoTokenizer.from_pretrained(abs, { local_files_only: true });
    } catch (err) {
      throw new ModelError("tokenizer_invalid", "cannot load the tokenizer", { dir: abs, cause: errorMessage(err) });
    }
    const eos = inner.model.tokens_to_ids.get(eosToken(abs));
    if (eos === undefined) throw new ModelError("tokenizer_invalid", "the tokenizer has no end-of-sequence token", { dir: abs });
    return new Tokenizer(inner, eos);
  }

  /** Token ids of `text`; GPT-2 adds no special tokens, and `<|endoftext|>` in the text is the special id. */
  encode(text: string): number[] {
    return this.inner.encode(text);
  }

  /** Text of `ids`, exactly (no clean-up of spaces), special tokens included. */
  decode(ids: readonly number[]): string {
    if (ids.length === 0) return "";
    return this.inner.decode([...ids], { skip_special_tokens: false, clean_up_tokenization_spaces: false });
  }
}

/** tokenizer_config.json's eos_token (a string or an AddedToken object); GPT-2's by default. */
function eosToken(dir: string): string {
  try {
    const cfg = JSON.parse(readFileSync(path.join(dir, "tokenizer_config.json"), "utf8")) as { eos_token?: string | { content?: string } };
    const t = cfg.eos_token;
    if (typeof t === "string") return t;
    if (t !== undefined && typeof t.content === "string") return t.content;
  } catch {
    // A malformed config already failed in from_pretrained; fall through to the default.
  }
  return "<|endoftext|>";
}
