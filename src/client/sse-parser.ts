import { createParser, type EventSourceParser } from "eventsource-parser";
import { ApiError } from "./api-error.js";

/** One Server-Sent Event as the WHATWG event-stream format defines it. */
export interface SseMessage {
  /** `event:` field; "message" when absent. */
  event: string;
  data: string;
  /** `id:` field of this event, if it had one. */
  id: string | undefined;
}

/**
 * Most characters one event (or an unfinished line) may hold while it arrives. The largest the
 * coordinator sends is a `token` event with a whole output (max_new_tokens 4096 of GPT-2 text,
 * well under 1 MiB); past this a broken or hostile server would have the CLI buffer forever.
 */
export const MAX_EVENT_CHARS = 16 * 1024 * 1024;

/**
 * An incremental `text/event-stream` parser: feed it decoded text in chunks of any size, get
 * back the complete events. The parsing is eventsource-parser's (line ends LF, CR or CRLF, also
 * split across chunks; `:` comments; `data:` lines joined with "\n"; an event without data
 * dropped, as browsers do); this class keeps the call shape the API client reads in a loop,
 * refuses an event above `maxEventChars`, and ends a line at a CR that ends a chunk (see push).
 * Reconnecting with Last-Event-ID stays in ApiClient.followJob, which makes a new parser per
 * connection.
 */
export class SseParser {
  private readonly parser: EventSourceParser;
  private ready: SseMessage[] = [];
  private overflow = false;
  private sawCr = false;

  /** The last `id:` of an event so far (what Last-Event-ID should carry on reconnect). */
  lastEventId: string | undefined;

  constructor(private readonly maxEventChars = MAX_EVENT_CHARS) {
    this.parser = createParser({
      onEvent: (e) => {
        if (e.id !== undefined) this.lastEventId = e.id;
        this.ready.push({ event: e.event ?? "message", data: e.data, id: e.id });
      },
      // "retry" and unknown fields are reported here too: nothing to do for a CLI.
      onError: (err) => {
        if (err.type === "max-buffer-size-exceeded") this.overflow = true;
      },
      maxBufferSize: maxEventChars,
    });
  }

  push(chunk: string): SseMessage[] {
    // eventsource-parser holds a CR that ends a chunk until it sees whether an LF follows, so with
    // CR line ends the last event of a burst would wait for the next chunk. The spec ends the line
    // at the CR: it is fed as CRLF here, and an LF that then starts the next chunk is dropped.
    let text = this.sawCr && chunk.startsWith("\n") ? chunk.slice(1) : chunk;
    this.sawCr = text.endsWith("\r");
    if (this.sawCr) text += "\n";
    if (!this.overflow) this.parser.feed(text);
    if (this.overflow) {
      throw new ApiError(0, "event_too_large", `an event of the stream is larger than ${this.maxEventChars} characters`);
    }
    const out = this.ready;
    this.ready = [];
    return out;
  }
}
