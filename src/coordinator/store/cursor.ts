import { ValidationError } from "../../common/errors.js";

/**
 * Page cursors, opaque to clients: base64url of the last row's (sort key, insertion seq). The seq
 * breaks ties between jobs of the same millisecond in submission order (a random id would not).
 */
export function encodeCursor(sortKey: number, seq: number): string {
  return Buffer.from(JSON.stringify([sortKey, seq])).toString("base64url");
}

/** The cursor's (sort key, seq); undefined for none; an InvalidCursorError (422) for one we did not issue. */
export function decodeCursor(cursor: string | undefined): [number, number] | undefined {
  if (cursor === undefined) return undefined;
  try {
    const v = JSON.parse(Buffer.from(cursor, "base64url").toString("utf8")) as unknown;
    if (Array.isArray(v) && v.length === 2 && Number.isInteger(v[0]) && Number.isInteger(v[1])) return [v[0] as number, v[1] as number];
  } catch {
    // fall through
  }
  throw new InvalidCursorError();
}

export class InvalidCursorError extends ValidationError {
  constructor() {
    super("cursor is not one this server issued", { field: "cursor" });
  }
}
