/**
 * Text that came from elsewhere (a miner's error message or output, a server's detail) made safe
 * for a terminal: characters that drive it — C0 controls but newline and tab, DEL, C1 controls
 * (ESC starts colour changes, cursor moves, title and clipboard writes), and the invisible
 * formatting characters that reorder or hide text (bidi overrides and isolates, zero-width
 * joiners, the BOM) — are shown as visible escapes such as `\x1b` and `\u202e`. Printable
 * text, including every other Unicode character, is unchanged.
 */
 
const DRIVING = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]/gu;
 
const DRIVING_OR_NEWLINE = /[\u0000-\u001f\u007f-\u009f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]/gu;

function escape(c: string): string {
  const code = c.codePointAt(0)!;
  if (c === "\n") return "\\n";
  if (c === "\t") return "\\t";
  if (c === "\r") return "\\r";
  return code <= 0xff ? `\\x${code.toString(16).padStart(2, "0")}` : `\\u${code.toString(16).padStart(4, "0")}`;
}

/** For text shown as a block (a result on a terminal): newlines and tabs stay. */
export function terminalText(text: string): string {
  return text.replace(DRIVING, escape);
}

/** For text on one line (a status field, an error message): newlines are escaped too. */
export function terminalLine(text: string): string {
  return text.replace(DRIVING_OR_NEWLINE, escape);
}
