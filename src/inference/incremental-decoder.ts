/**
 * Turns a growing list of token ids into text deltas. Byte-level BPE tokens can end in the
 * middle of a UTF-8 character, so a delta is only released once the text decodes without a
 * trailing U+FFFD; only a short window of ids is re-decoded per token (as in Hugging Face's
 * TextStreamer and vLLM's detokenizer), so the cost per token stays flat.
 */
export class IncrementalDecoder {
  private readonly ids: number[] = [];
  /** Start of the window that is re-decoded each time (a character boundary). */
  private prefixOffset = 0;
  /** End of the text already released. */
  private readOffset = 0;

  constructor(private readonly decode: (ids: readonly number[]) => string) {}

  /** Adds one id; returns the newly complete text ("" while a character is incomplete). */
  push(id: number): string {
    this.ids.push(id);
    const prefix = this.decode(this.ids.slice(this.prefixOffset, this.readOffset));
    const full = this.decode(this.ids.slice(this.prefixOffset));
    if (full.length > prefix.length && !full.endsWith("\uFFFD")) {
      this.prefixOffset = this.readOffset;
      this.readOffset = this.ids.length;
      return full.slice(prefix.length);
    }
    return "";
  }

  /** At the end: whatever is left, incomplete characters included (as U+FFFD). */
  flush(): string {
    if (this.readOffset === this.ids.length) return "";
    const prefix = this.decode(this.ids.slice(this.prefixOffset, this.readOffset));
    const full = this.decode(this.ids.slice(this.prefixOffset));
    this.prefixOffset = this.readOffset = this.ids.length;
    return full.slice(prefix.length);
  }
}
