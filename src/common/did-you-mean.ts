/** Edit distance (insertions, deletions, substitutions; a swap of two neighbours counts once). */
function distance(a: string, b: string): number {
  const d: number[][] = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j += 1) d[0]![j] = j;
  for (let i = 1; i <= a.length; i += 1) {
    for (let j = 1; j <= b.length; j += 1) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let best = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) best = Math.min(best, d[i - 2]![j - 2]! + 1);
      d[i]![j] = best;
    }
  }
  return d[a.length]![b.length]!;
}

/**
 * The known name a misspelt one most likely meant, or undefined when none is close: within a
 * third of the word's length (at least 1, at most 3 edits), or the same name but for case,
 * `-` for `_`, or a known name that the misspelling contains or starts (`port` for `prot`,
 * `lease_ttl` for `lease_ttl_ms`).
 */
export function didYouMean(name: string, known: readonly string[]): string | undefined {
  const norm = (s: string): string => s.toLowerCase().replaceAll("-", "_");
  const n = norm(name);
  let best: { key: string; d: number } | undefined;
  for (const key of known) {
    const k = norm(key);
    const d = k === n ? 0 : distance(n, k);
    if (best === undefined || d < best.d) best = { key, d };
  }
  if (best === undefined) return undefined;
  const limit = Math.min(3, Math.max(1, Math.floor(n.length / 3)));
  if (best.d <= limit) return best.key;
  const related = known.find((key) => key.length >= 4 && n.length >= 3 && (n.startsWith(norm(key)) || norm(key).startsWith(n)) && Math.abs(key.length - n.length) <= 4);
  return related;
}
