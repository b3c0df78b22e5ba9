import type { SseEvent } from "../e2e/cluster.js";

/**
 * What a client following `event: token` ends with: each piece makes the text
 * `text.slice(0, index) + text`; `text_restart` starts it again. Also counts what it saw.
 */
export function streamedText(events: readonly SseEvent[]): { text: string; tokens: number; restarts: number; attempts: number[] } {
  let text = "";
  let tokens = 0;
  let restarts = 0;
  const attempts: number[] = [];
  for (const e of events) {
    if (e.event === "text_restart") {
      restarts++;
      text = "";
    } else if (e.event === "token") {
      tokens++;
      const index = e.data.index as number;
      if (index > text.length) throw new Error(`token at ${index} past the ${text.length} code units the client has`);
      text = text.slice(0, index) + (e.data.text as string);
      const attempt = e.data.attempt as number;
      if (!attempts.includes(attempt)) attempts.push(attempt);
    }
  }
  return { text, tokens, restarts, attempts };
}
