import type { FinishReason } from "./engine.js";
import { IncrementalDecoder } from "./incremental-decoder.js";
import { StopSequenceMatcher } from "./stop-sequences.js";

/**
 * Turns generated token ids into the text a client sees, one token at a time: incremental
 * decoding (whole characters only), the end-of-text token left out, stop sequences cut exactly.
 * Text held back (an incomplete character, a possible start of a stop sequence) is released
 * with the last token, so the deltas always add up to the final text.
 */
export class TextAssembler {
  private readonly detok: IncrementalDecoder;
  private readonly stops: StopSequenceMatcher;
  private text = "";
  private stoppedAfter: number | undefined;

  constructor(
    decode: (ids: readonly number[]) => string,
    private readonly eosTokenId: number,
    stop: readonly string[],
  ) {
    this.detok = new IncrementalDecoder(decode);
    this.stops = new StopSequenceMatcher(stop);
  }

  /** Token count at which a stop sequence ended the text, if one did. */
  get stoppedAtToken(): number | undefined {
    return this.stoppedAfter;
  }

  get result(): string {
    return this.text;
  }

  /**
   * The text this token adds. `last` says no token follows (length, end-of-text), so held-back
   * text is released. After a stop sequence, further tokens add nothing.
   */
  push(tokenId: number, count: number, last: boolean): string {
    if (this.stoppedAfter !== undefined) return "";
    let delta = "";
    if (tokenId !== this.eosTokenId) delta = this.take(this.stops.push(this.detok.push(tokenId)), count);
    if ((last || tokenId === this.eosTokenId) && this.stoppedAfter === undefined) delta += this.finish(count);
    this.text += delta;
    return delta;
  }

  /** Releases held-back text when generation ended without a last token (cancelled). */
  end(count: number): string {
    if (this.stoppedAfter !== undefined) return "";
    const delta = this.finish(count);
    this.text += delta;
    return delta;
  }

  finishReason(decoded: "length" | "eos" | "cancelled"): FinishReason {
    return this.stoppedAfter === undefined ? decoded : "stop";
  }

  private finish(count: number): string {
    const step = this.take(this.stops.push(this.detok.flush()), count);
    return this.stoppedAfter === undefined ? step + this.stops.flush() : step;
  }

  private take(step: { delta: string; stopped: boolean }, count: number): string {
    if (step.stopped) this.stoppedAfter = count;
    return step.delta;
  }
}
