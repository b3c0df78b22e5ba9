import type { Engine, GenerateRequest, GenerateResult, TokenEvent } from "./engine.js";

export interface TokenStream extends AsyncIterable<TokenEvent> {
  /** The whole result; settles after the last event (rejects as generate() would). */
  result: Promise<GenerateResult>;
}

/**
 * The async-iterator face of {@link Engine.generate}: `for await (const e of stream)` sees
 * every token event in order, then `await stream.result`. Events are buffered, so a slow
 * consumer never blocks the engine; breaking out of the loop does not cancel (use the signal).
 */
export function generateStream(engine: Engine, request: Omit<GenerateRequest, "onToken">): TokenStream {
  const buffered: TokenEvent[] = [];
  let wake: (() => void) | undefined;
  let ended = false;
  const notify = (): void => {
    wake?.();
    wake = undefined;
  };
  const result = engine.generate({
    ...request,
    onToken: (e) => {
      buffered.push(e);
      notify();
    },
  });
  const settled = result.then(
    () => undefined,
    () => undefined,
  );
  void settled.then(() => {
    ended = true;
    notify();
  });
  return {
    result,
    async *[Symbol.asyncIterator]() {
      for (;;) {
        const next = buffered.shift();
        if (next !== undefined) {
          yield next;
          continue;
        }
        if (ended) break;
        await new Promise<void>((resolve) => (wake = resolve));
      }
      // Surface a failure to the loop too, not only to `result`.
      await result;
    },
  };
}
