import { AppError } from "../common/errors.js";

/**
 * An answer of the coordinator that was not a success: its problem+json `detail`, `code` and
 * HTTP status, or, when the body is not a problem document, the status line. `status` 0 means
 * the coordinator could not be reached at all.
 */
export class ApiError extends AppError {
  readonly detail: string;

  constructor(status: number, code: string, detail: string, options: { retryable?: boolean; details?: Record<string, unknown>; cause?: unknown } = {}) {
    super(code, detail, { status, ...options });
    this.detail = detail;
  }

  /** The one line a CLI prints: `<detail> (<code>, HTTP <status>)`. */
  oneLine(): string {
    return this.status === 0 ? `${this.detail} (${this.code})` : `${this.detail} (${this.code}, HTTP ${this.status})`;
  }
}
