/** One Server-Sent Event as the WHATWG event-stream format defines it. */
export interface SseMessage {
  /** `event:` field; "message" when absent. */
  event: string;
  data: string;
  /** `id:` field of this event, if it had one. */
  id: string | undefined;
}

/**
 * A small incremental parser for `text/event-stream` (the WHATWG "event stream interpretation"):
 * feed it decoded text in chunks of any size, get back the complete events. Lines end in LF, CR
 * or CRLF (also split across chunks); `:` lines are comments (keepalives); `data:` lines join
 * with "\n"; a blank line dispatches; an event without data is dropped, as browsers do.
 */
export class SseParser {
  private buffer = "";
  private event = "";
  private data: string[] = [];
  private id: string | undefined;
  private sawCr = false;

  /** The last `id:` seen in the stream (what Last-Event-ID should carry on reconnect). */
  lastEventId: string | undefined;

  push(chunk: string): SseMessage[] {
    let text = chunk;
    // A CR at the end of the previous chunk may be the first half of a CRLF.
    if (this.sawCr && text.startsWith("\n")) text = text.slice(1);
    this.sawCr = false;
    this.buffer += text;
    const out: SseMessage[] = [];
    for (;;) {
      const m = /\r\n|\r|\n/.exec(this.buffer);
      if (m === null) break;
      // A lone CR at the very end: wait for the next chunk to tell CR from CRLF.
      if (m[0] === "\r" && m.index === this.buffer.length - 1) {
        const line = this.buffer.slice(0, m.index);
        this.buffer = "";
        this.sawCr = true;
        this.line(line, out);
        break;
      }
      const line = this.buffer.slice(0, m.index);
      this.buffer = this.buffer.slice(m.index + m[0].length);
      this.line(line, out);
    }
    return out;
  }

  private line(line: string, out: SseMessage[]): void {
    if (line === "") {
      if (this.data.length > 0) out.push({ event: this.event === "" ? "message" : this.event, data: this.data.join("\n"), id: this.id });
      this.event = "";
      this.data = [];
      this.id = undefined;
      return;
    }
    if (line.startsWith(":")) return;
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    switch (field) {
      case "event":
        this.event = value;
        break;
      case "data":
        this.data.push(value);
        break;
      case "id":
        if (!value.includes("\0")) {
          this.id = value;
          this.lastEventId = value;
        }
        break;
      default:
        // "retry" and unknown fields: nothing to do for a CLI.
        break;
    }
  }
}
