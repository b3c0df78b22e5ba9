/** Option parsers shared by several commands. */

/** A repeatable list flag: `--flag a,b --flag c` → ["a", "b", "c"] (blanks dropped). */
export function collectList(value: string, all: string[] | undefined): string[] {
  return [...(all ?? []), ...value.split(",").map((v) => v.trim()).filter((v) => v !== "")];
}
