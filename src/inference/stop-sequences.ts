/**
 * Cuts streamed text exactly before the first occurrence of any stop sequence, also when a
 * stop sequence spans several tokens. Text that could still turn out to be the start of a
 * stop sequence is held back until the next piece decides it, so what was emitted never has
 * to be taken back.
 */
export class StopSequenceMatcher {
  private readonly stops: string[];
  private pending = "";
  private stoppedAt: string | undefined;

  constructor(stops: readonly string[]) {
    this.stops = stops.filter((s) => s.length > 0);
  }

  /** The stop sequence that ended the text, once one has. */
  get matched(): string | undefined {
    return this.stoppedAt;
  }

  /** Takes the next piece of text; returns what may be emitted now and whether a stop sequence was hit. */
  push(text: string): { delta: string; stopped: boolean } {
    if (this.stoppedAt !== undefined) return { delta: "", stopped: true };
    const buffer = this.pending + text;
    let cut = -1;
    for (const stop of this.stops) {
      const at = buffer.indexOf(stop);
      if (at !== -1 && (cut === -1 || at < cut)) {
        cut = at;
        this.stoppedAt = stop;
      }
    }
    if (cut !== -1) {
      this.pending = "";
      return { delta: buffer.slice(0, cut), stopped: true };
    }
    const hold = this.heldBackLength(buffer);
    this.pending = buffer.slice(buffer.length - hold);
    return { delta: buffer.slice(0, buffer.length - hold), stopped: false };
  }

  /** At the end of generation: the held-back text, which turned out not to be a stop sequence. */
  flush(): string {
    const rest = this.pending;
    this.pending = "";
    return this.stoppedAt === undefined ? rest : "";
  }

  /** Length of the longest suffix of `buffer` that is a proper prefix of some stop sequence. */
  private heldBackLength(buffer: string): number {
    let longest = 0;
    for (const stop of this.stops) {
      for (let n = Math.min(stop.length - 1, buffer.length); n > longest; n--) {
        if (buffer.endsWith(stop.slice(0, n))) {
          longest = n;
          break;
        }
      }
    }
    return longest;
  }
}
