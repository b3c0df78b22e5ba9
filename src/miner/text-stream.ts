import { TEXT_FRAME_MAX_CHARS, type LeaseRef, type TextFrame } from "../protocol/frames.js";

export interface TextStreamOptions {
  /** Sends a frame now; false when the connection is down (a resend from 0 follows the next welcome). */
  send: (frame: TextFrame) => boolean;
  /** Text is sent at least this often while it grows, ms. */
  intervalMs: number;
  /** …or as soon as this many tokens are waiting. */
  maxTokens: number;
}

/**
 * The generated text of one running attempt, sent to the coordinator as coalesced `text` frames
 * (protocol 4): a frame at most every `intervalMs`, sooner when `maxTokens` tokens wait — never a
 * frame per token at high speed. Each frame carries where its delta starts (`index`, UTF-16
 * code units) and the progress figures, so it replaces progress frames.
 *
 * `resend()` (after a welcome that resumed the lease, possibly on another replica) sends the
 * whole text again from index 0. A frame that could not be sent is not retried: the resend after
 * the next welcome covers it. Deltas never split a surrogate pair.
 */
export class TextStream {
  private text = "";
  /** Code units the coordinator has (as far as this connection knows). */
  private sent = 0;
  private tokens = 0;
  private tokensPerSecond = 0;
  private tokensWaiting = 0;
  private lastSentAt = -Infinity;
  private timer: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(
    private readonly ref: LeaseRef,
    private readonly options: TextStreamOptions,
  ) {}

  /** One generated token's text (possibly ""), with the progress figures after it. */
  push(delta: string, tokens: number, tokensPerSecond: number): void {
    if (this.closed) return;
    this.text += delta;
    this.tokens = tokens;
    this.tokensPerSecond = tokensPerSecond;
    this.tokensWaiting++;
    const now = performance.now();
    if (this.tokensWaiting >= this.options.maxTokens || now - this.lastSentAt >= this.options.intervalMs) {
      this.flush();
      return;
    }
    if (this.timer === undefined) {
      this.timer = setTimeout(() => this.flush(), Math.max(0, this.options.intervalMs - (now - this.lastSentAt)));
      this.timer.unref();
    }
  }

  /** Sends what is waiting now (before the result, so the coordinator has the text the result ends). */
  flush(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    if (this.closed) return;
    this.tokensWaiting = 0;
    this.lastSentAt = performance.now();
    // A progress-only frame (empty delta) still goes when tokens moved: it renews and shows progress.
    do {
      let end = Math.min(this.text.length, this.sent + TEXT_FRAME_MAX_CHARS);
      if (end < this.text.length && isHighSurrogate(this.text.charCodeAt(end - 1))) end--;
      const frame: TextFrame = {
        type: "text",
        ...this.ref,
        index: this.sent,
        delta: this.text.slice(this.sent, end),
        tokens: this.tokens,
        tokens_per_s: Math.round(this.tokensPerSecond * 100) / 100,
      };
      if (!this.options.send(frame)) return;
      this.sent = end;
    } while (this.sent < this.text.length);
  }

  /** The coordinator may have none of the text (a resumed lease): send all of it again from 0. */
  resend(): void {
    this.sent = 0;
    if (this.text.length > 0 || this.tokens > 0) this.flush();
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.timer);
    this.timer = undefined;
  }
}

function isHighSurrogate(code: number): boolean {
  return code >= 0xd800 && code <= 0xdbff;
}
