/**
 * Errors carry a stable `code`, an HTTP status for the REST edge and whether the caller may
 * retry. Over HTTP they become application/problem+json; over the WebSocket plain data.
 * Anything else that is thrown is turned into an `AppError` by {@link toAppError} first.
 */
export interface AppErrorOptions {
  status?: number;
  retryable?: boolean;
  details?: Record<string, unknown>;
  cause?: unknown;
}

export class AppError extends Error {
  readonly code: string;
  readonly status: number;
  readonly retryable: boolean;
  readonly details: Record<string, unknown> | undefined;

  constructor(code: string, message: string, options: AppErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.status = options.status ?? 500;
    this.retryable = options.retryable ?? false;
    this.details = options.details;
  }

  /** Plain data for the wire and for logs. */
  toJSON(): { code: string; message: string; retryable: boolean; details?: Record<string, unknown> } {
    return {
      code: this.code,
      message: this.message,
      retryable: this.retryable,
      ...(this.details === undefined ? {} : { details: this.details }),
    };
  }
}

/** A config file or flag that cannot be used; names the file, the key and the reason. */
export class ConfigError extends AppError {
  constructor(message: string, details?: Record<string, unknown>) {
    super("config_invalid", message, { status: 500, details });
  }
}

export class ValidationError extends AppError {
  constructor(message: string, details?: Record<string, unknown>) {
    super("validation_failed", message, { status: 422, details });
  }
}

export class BadRequestError extends AppError {
  constructor(message: string, details?: Record<string, unknown>) {
    super("bad_request", message, { status: 400, details });
  }
}

export class UnauthorizedError extends AppError {
  constructor(message = "a valid API key is required") {
    super("unauthorized", message, { status: 401 });
  }
}

export class NotFoundError extends AppError {
  constructor(code: string, message: string) {
    super(code, message, { status: 404 });
  }
}

export class ConflictError extends AppError {
  constructor(code: string, message: string, details?: Record<string, unknown>) {
    super(code, message, { status: 409, details });
  }
}

export class UnavailableError extends AppError {
  constructor(message: string, options: { retryAfterSeconds?: number; cause?: unknown } = {}) {
    super("unavailable", message, {
      status: 503,
      retryable: true,
      details: { retry_after_seconds: options.retryAfterSeconds ?? 1 },
      cause: options.cause,
    });
  }
}

export class ModelError extends AppError {
  constructor(code: string, message: string, details?: Record<string, unknown>) {
    super(code, message, { status: 422, details });
  }
}

/** Turns whatever was thrown into an AppError without losing the original as `cause`. */
export function toAppError(err: unknown): AppError {
  if (err instanceof AppError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new AppError("internal", message, { status: 500, retryable: false, cause: err });
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
