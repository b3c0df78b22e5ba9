/**
 * `run` one call at a time, with the calls made while it runs folded into one more run after
 * it (not one each): for re-reads woken by hints, where what matters is one read after the
 * latest hint. `run` returning true ends it for good (later calls do nothing). The call that
 * starts a round gets its rejection; calls folded into it resolve at once.
 */
export function coalesced(run: () => Promise<boolean | void>): () => Promise<void> {
  let running = false;
  let again = false;
  let finished = false;
  return async () => {
    if (finished) return;
    if (running) {
      again = true;
      return;
    }
    running = true;
    try {
      do {
        again = false;
        if ((await run()) === true) finished = true;
      } while (again && !finished);
    } finally {
      running = false;
    }
  };
}
