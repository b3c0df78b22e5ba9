import { createHash } from "node:crypto";
import { Type, type Static, type TSchema } from "@sinclair/typebox";
import { TypeCompiler, type TypeCheck } from "@sinclair/typebox/compiler";
import { GENERATION_BOUNDS, type ResolvedGenerationParameters } from "./generation.js";

/**
 * The miner protocol: every WebSocket frame in both directions, as one TypeBox schema per frame
 * (which also yields its TypeScript type), and one validating parser per direction.
 *
 * Frames are JSON text objects tagged with `type`. The connection lives at `/v1/miners/connect`,
 * authenticated with `Authorization: Bearer <miner key>` at the upgrade.
 *
 * Conversation:
 *
 *   miner                                   coordinator
 *   hello {protocol_version, instance_id, …, in_flight} ─▶   (instance_id from protocol 5 on)
 *                                         ◀─ welcome {miner_id, heartbeat_ms, lease_ttl_ms, resumed, refused, replica, protocol_version}
 *                                            (protocol_version: the version both speak)
 *                                            (or error {fatal: true} and close; code "duplicate_miner" when another
 *                                            instance holds a live session under this key and miner name)
 *   pull {free_slots}                     ─▶   (after each welcome and whenever a slot frees up)
 *                                         ◀─ assign {job, attempt, lease_token, lease_expires_at}
 *                                            (zero or more, now or when matching jobs arrive)
 *   started {job_id, attempt, lease_token} ─▶
 *   progress {…, tokens, max_tokens, tokens_per_s} ─▶   (throttled; renews the lease)
 *   text {…, index, delta, tokens, tokens_per_s} ─▶   (protocol 4: the text as it comes, coalesced; replaces progress;
 *                                            the whole text again from index 0 after every welcome)
 *   heartbeat {in_flight, free_slots, gpus?} ─▶ (every heartbeat_ms; renews every listed lease;
 *                                            gpus: protocol 5, utilisation and free VRAM per GPU)
 *   result_chunk {…, seq, data} × n       ─▶   (only for outputs over RESULT_INLINE_MAX_BYTES)
 *   result {…, output | chunks, sha256}   ─▶
 *                                         ◀─ ack {job_id, attempt, of: "result", status}
 *   fail {…, code, message, retryable}    ─▶
 *                                         ◀─ ack {…, of: "fail", status}
 *                                         ◀─ cancel {job_id, attempt, reason}
 *   fail {…, code: "cancelled"}           ─▶   (the cancel's acknowledgement, within one decode step)
 *   released {…, reason}                  ─▶   (a job handed back unfinished, e.g. on drain)
 *                                         ◀─ ack {…, of: "released", status}
 *                                         ◀─ drain {reason}   (stop pulling on this connection)
 *   error {code, message, fatal}         ◀─▶   (a bad frame; fatal ones are followed by a close)
 *
 * Slots: `pull.free_slots` REPLACES the coordinator's count of the miner's free slots; each
 * assign uses one. Nothing else changes the count: hello.slots/free_slots and
 * heartbeat.free_slots are informational (status pages, "how many miners could run this").
 * An assign that arrives when the miner has no free slot (a pull raced a finishing job), while
 * it drains, or after a coordinator `drain`, is handed straight back with `released` (reason
 * "no_free_slot", "draining" or "coordinator_drain"); the coordinator requeues it without
 * counting a failed attempt. `released` reason "shutdown": the drain grace ran out mid-run.
 *
 * Every job-scoped frame a miner sends carries the fencing triple (job_id, attempt, lease_token);
 * the coordinator acts on it only if the triple still holds the lease, and otherwise answers
 * `ack` with status "stale" (for result/fail/released) or ignores it (progress/started).
 *
 * Results: `sha256` is the lowercase hex SHA-256 of the output's UTF-8 bytes. An output of at most
 * RESULT_INLINE_MAX_BYTES UTF-8 bytes travels inline in `result.output`. A larger one is sent as
 * `result_chunk` frames with `seq` 0…n-1, each `data` the base64 of at most RESULT_CHUNK_BYTES
 * bytes of the UTF-8 output (chunks may split a multi-byte character; the bytes are joined
 * before decoding), followed by `result` with `chunks: n` and no `output`. The coordinator
 * joins the chunks in `seq` order, checks the byte count and sha256, and answers ack "invalid"
 * (the miner may resend) when they do not match.
 *
 * Fail codes the miner uses: "cancelled" (after a cancel frame), "timed_out" (timeout_seconds
 * ran out), "model_unavailable", "engine_error", "engine_crashed", "invalid_assignment". The
 * coordinator alone decides the states named like the first two: a "cancelled" fail ends a job
 * cancelled only when a client asked, a "timed_out" one only past the attempt's deadline;
 * otherwise either is an ordinary failure, recorded as "miner_claimed_<code>". Codes are letters,
 * digits and `_ . : -` (protocol 2).
 *
 * Limits the coordinator enforces per connection (config/coordinator.toml, [gateway]): a frame
 * budget of frame_rate frames/s and byte_rate bytes/s with bursts of frame_burst and byte_burst
 * (past it: error {code: "rate_limited", fatal: true}, close 1008, and the key's new connections
 * get 429 for rate_limit_cooldown); a ping every heartbeat, max_missed_pongs unanswered in a row
 * and the connection is dropped; buffered result chunks up to
 * max_buffered_result_bytes_per_connection (and max_buffered_result_bytes in total: past it
 * error {code: "result_buffer_full"} and the result is acked "invalid", the lease untouched); a
 * pull's free_slots never above the hello's slots minus the leases held; hello figures clamped
 * (max_slots, max_gpu_vram), progress tokens to the job's max_new_tokens and speeds to
 * max_tokens_per_second. Renewals from progress and heartbeats are coalesced to at most one
 * store write per lease per third of the lease TTL.
 */

/** Largest frame either side accepts, in bytes of JSON text. Larger ones are refused. */
export const MAX_FRAME_BYTES = 1024 * 1024;
/** Outputs up to this many UTF-8 bytes go inline in `result.output`; larger ones in chunks. */
export const RESULT_INLINE_MAX_BYTES = 64 * 1024;
/** Raw bytes per `result_chunk` (base64 makes it 4/3 larger on the wire). */
export const RESULT_CHUNK_BYTES = 192 * 1024;
/** Most chunks one result may have (256 × 192 KiB = 48 MiB). */
export const RESULT_MAX_CHUNKS = 256;
/** Longest prompt an assign carries, in UTF-16 code units; JSON-escaped it still fits a frame. */
export const MAX_PROMPT_CHARS = 128 * 1024;

const Id = Type.String({ minLength: 1, maxLength: 128 });
const Attempt = Type.Integer({ minimum: 1 });
const LeaseToken = Type.String({ minLength: 1, maxLength: 256 });
const Count = Type.Integer({ minimum: 0 });
const Sha256Hex = Type.String({ pattern: "^[0-9a-f]{64}$" });
const IsoTime = Type.String({ minLength: 1, maxLength: 64, description: "ISO 8601 time" });
/** A machine-readable code: a safe charset, so nothing a miner sends as a code can drive a terminal or a log. */
const Code = Type.String({ minLength: 1, maxLength: 64, pattern: "^[A-Za-z0-9_.:-]+$" });
const Message = Type.String({ maxLength: 2048 });

const strict = { additionalProperties: false } as const;

/** The fencing triple that names one attempt's lease. */
export const LeaseRefSchema = Type.Object({ job_id: Id, attempt: Attempt, lease_token: LeaseToken }, strict);
export type LeaseRef = Static<typeof LeaseRefSchema>;

export const GpuInfoSchema = Type.Object(
  {
    /** nvidia-smi index (CUDA device id). */
    index: Type.Integer({ minimum: 0 }),
    /** As the driver reports it, e.g. "NVIDIA GeForce RTX 4090"; matched with gpuMatches(). */
    name: Type.String({ minLength: 1, maxLength: 256 }),
    vram_total_mb: Count,
    vram_free_mb: Count,
  },
  strict,
);
export type GpuInfo = Static<typeof GpuInfoSchema>;

/** A GPU's load as the miner last read it (nvidia-smi), in heartbeats from protocol 5 on. */
export const GpuLoadSchema = Type.Object(
  {
    /** As in the hello's gpus. */
    index: Type.Integer({ minimum: 0 }),
    utilization_percent: Type.Number({ minimum: 0, maximum: 100 }),
    vram_free_mb: Count,
  },
  strict,
);
export type GpuLoad = Static<typeof GpuLoadSchema>;

/** A job the miner still holds after a reconnect: running, or finished with its result unacknowledged. */
export const InFlightSchema = Type.Object(
  {
    job_id: Id,
    attempt: Attempt,
    lease_token: LeaseToken,
    /** "running", or "finished" when a result/fail waits to be resent. */
    state: Type.Union([Type.Literal("running"), Type.Literal("finished")]),
  },
  strict,
);
export type InFlight = Static<typeof InFlightSchema>;

/** ResolvedGenerationParameters (src/protocol/generation.ts) as a schema: every default filled in. */
export const ResolvedGenerationParametersSchema = Type.Object(
  {
    max_new_tokens: Type.Integer({
      minimum: GENERATION_BOUNDS.max_new_tokens.min,
      maximum: GENERATION_BOUNDS.max_new_tokens.max,
    }),
    temperature: Type.Number({ minimum: GENERATION_BOUNDS.temperature.min, maximum: GENERATION_BOUNDS.temperature.max }),
    top_k: Type.Integer({ minimum: GENERATION_BOUNDS.top_k.min, maximum: GENERATION_BOUNDS.top_k.max }),
    top_p: Type.Number({ minimum: GENERATION_BOUNDS.top_p.min, maximum: GENERATION_BOUNDS.top_p.max }),
    repetition_penalty: Type.Number({
      minimum: GENERATION_BOUNDS.repetition_penalty.min,
      maximum: GENERATION_BOUNDS.repetition_penalty.max,
    }),
    stop: Type.Array(Type.String({ minLength: 1, maxLength: GENERATION_BOUNDS.stop.maxLength }), {
      maxItems: GENERATION_BOUNDS.stop.maxItems,
    }),
    seed: Type.Integer({ minimum: GENERATION_BOUNDS.seed.min, maximum: GENERATION_BOUNDS.seed.max }),
  },
  strict,
);
// Compile-time check that the schema and the shared interface stay the same shape.
const _paramsShape: ResolvedGenerationParameters = {} as Static<typeof ResolvedGenerationParametersSchema>;
void _paramsShape;

export const AssignedJobSchema = Type.Object(
  {
    job_id: Id,
    model: Type.String({ minLength: 1, maxLength: 128 }),
    prompt: Type.String({ maxLength: MAX_PROMPT_CHARS }),
    parameters: ResolvedGenerationParametersSchema,
    /** Bound on the run, counted by the miner from when it receives the assign. */
    timeout_seconds: Type.Integer({ minimum: 1 }),
  },
  strict,
);
export type AssignedJob = Static<typeof AssignedJobSchema>;

export const FinishReasonSchema = Type.Union([
  Type.Literal("length"),
  Type.Literal("eos"),
  Type.Literal("stop"),
  Type.Literal("cancelled"),
]);

export const UsageSchema = Type.Object({ prompt_tokens: Count, completion_tokens: Count }, strict);
export const TimingSchema = Type.Object(
  {
    time_to_first_token_ms: Type.Number({ minimum: 0 }),
    tokens_per_second: Type.Number({ minimum: 0 }),
    total_ms: Type.Number({ minimum: 0 }),
  },
  strict,
);

// ---------------------------------------------------------------- miner → coordinator

export const HelloFrameSchema = Type.Object(
  {
    type: Type.Literal("hello"),
    protocol_version: Type.Integer({ minimum: 1 }),
    /**
     * Protocol 5 (required from it on): random per miner process start. The same id under the
     * same key and name is a reconnect (it replaces the old session); another id while that
     * session is live is a second host with the same name, refused with `duplicate_miner`.
     */
    instance_id: Type.Optional(Type.String({ pattern: "^[A-Za-z0-9_-]{8,64}$" })),
    miner_name: Type.String({ minLength: 1, maxLength: 128 }),
    /** The miner's software version (package.json). */
    version: Type.String({ minLength: 1, maxLength: 64 }),
    /** GPUs the miner uses (after config selection); empty for a CPU miner. */
    gpus: Type.Array(GpuInfoSchema, { maxItems: 64 }),
    /** Models it can serve (names as in a job's `model`). */
    models: Type.Array(Type.String({ minLength: 1, maxLength: 128 }), { maxItems: 256 }),
    /** Total concurrent jobs it runs at most. */
    slots: Type.Integer({ minimum: 0, maximum: 4096 }),
    /** Slots free right now (slots minus jobs still running after a reconnect). Informational: the pull that follows the welcome sets the count. */
    free_slots: Type.Integer({ minimum: 0, maximum: 4096 }),
    in_flight: Type.Array(InFlightSchema, { maxItems: 4096 }),
  },
  strict,
);

export const PullFrameSchema = Type.Object(
  { type: Type.Literal("pull"), free_slots: Type.Integer({ minimum: 0, maximum: 4096 }) },
  strict,
);

export const StartedFrameSchema = Type.Object(
  { type: Type.Literal("started"), job_id: Id, attempt: Attempt, lease_token: LeaseToken },
  strict,
);

export const ProgressFrameSchema = Type.Object(
  {
    type: Type.Literal("progress"),
    job_id: Id,
    attempt: Attempt,
    lease_token: LeaseToken,
    tokens: Count,
    max_tokens: Count,
    tokens_per_s: Type.Number({ minimum: 0 }),
  },
  strict,
);

/** Most UTF-16 code units one text frame carries (a longer resend goes in several frames). */
export const TEXT_FRAME_MAX_CHARS = 32 * 1024;

export const TextFrameSchema = Type.Object(
  {
    type: Type.Literal("text"),
    job_id: Id,
    attempt: Attempt,
    lease_token: LeaseToken,
    /** Where `delta` starts in the attempt's text, in UTF-16 code units: the length sent before it; 0 restarts the text (a resend). */
    index: Count,
    delta: Type.String({ maxLength: TEXT_FRAME_MAX_CHARS }),
    /** As in progress: completion tokens so far and the decode speed. */
    tokens: Count,
    tokens_per_s: Type.Number({ minimum: 0 }),
  },
  strict,
);

export const HeartbeatFrameSchema = Type.Object(
  {
    type: Type.Literal("heartbeat"),
    /** Leases the miner still holds (running or with an unacknowledged result); each is renewed. */
    in_flight: Type.Array(InFlightSchema, { maxItems: 4096 }),
    /** Informational (see "Slots" above). */
    free_slots: Type.Integer({ minimum: 0, maximum: 4096 }),
    /** Protocol 5: each GPU's utilisation and free VRAM, when the miner can read them (informational). */
    gpus: Type.Optional(Type.Array(GpuLoadSchema, { maxItems: 64 })),
  },
  strict,
);

export const ResultChunkFrameSchema = Type.Object(
  {
    type: Type.Literal("result_chunk"),
    job_id: Id,
    attempt: Attempt,
    lease_token: LeaseToken,
    seq: Type.Integer({ minimum: 0, maximum: RESULT_MAX_CHUNKS - 1 }),
    /** base64 of at most RESULT_CHUNK_BYTES bytes of the UTF-8 output. */
    data: Type.String({ maxLength: Math.ceil(RESULT_CHUNK_BYTES / 3) * 4, pattern: "^[A-Za-z0-9+/]*={0,2}$" }),
  },
  strict,
);

export const ResultFrameSchema = Type.Object(
  {
    type: Type.Literal("result"),
    job_id: Id,
    attempt: Attempt,
    lease_token: LeaseToken,
    /** The generated text, when it is at most RESULT_INLINE_MAX_BYTES UTF-8 bytes. */
    output: Type.Optional(Type.String()),
    /** Number of result_chunk frames sent before this one, when `output` is absent. */
    chunks: Type.Optional(Type.Integer({ minimum: 1, maximum: RESULT_MAX_CHUNKS })),
    /** UTF-8 byte length of the whole output. */
    output_bytes: Count,
    sha256: Sha256Hex,
    finish_reason: FinishReasonSchema,
    usage: UsageSchema,
    timing: TimingSchema,
  },
  strict,
);

export const FailFrameSchema = Type.Object(
  {
    type: Type.Literal("fail"),
    job_id: Id,
    attempt: Attempt,
    lease_token: LeaseToken,
    code: Code,
    message: Message,
    /** Whether another attempt (on any miner) could succeed. */
    retryable: Type.Boolean(),
  },
  strict,
);

export const ReleasedFrameSchema = Type.Object(
  {
    type: Type.Literal("released"),
    job_id: Id,
    attempt: Attempt,
    lease_token: LeaseToken,
    /** "draining" (grace period over), "shutdown", … */
    reason: Code,
  },
  strict,
);

// ---------------------------------------------------------------- coordinator → miner

export const WelcomeFrameSchema = Type.Object(
  {
    type: Type.Literal("welcome"),
    miner_id: Id,
    heartbeat_ms: Type.Integer({ minimum: 100 }),
    lease_ttl_ms: Type.Integer({ minimum: 100 }),
    /** hello.in_flight entries whose leases still hold; the miner keeps running them. */
    resumed: Type.Array(Type.Object({ ...LeaseRefSchema.properties, lease_expires_at: IsoTime }, strict), {
      maxItems: 4096,
    }),
    /** hello.in_flight entries the miner must drop (lease lost, job cancelled or finished). */
    refused: Type.Array(Type.Object({ job_id: Id, attempt: Attempt, reason: Code }, strict), { maxItems: 4096 }),
    /** The coordinator replica holding this session (protocol 3; for logs and status). */
    replica: Type.Optional(Type.String({ minLength: 1, maxLength: 128 })),
    /** The protocol both sides speak: the lower of the hello's and the coordinator's (protocol 4). */
    protocol_version: Type.Optional(Type.Integer({ minimum: 1 })),
  },
  strict,
);

export const AssignFrameSchema = Type.Object(
  {
    type: Type.Literal("assign"),
    job: AssignedJobSchema,
    attempt: Attempt,
    lease_token: LeaseToken,
    lease_expires_at: IsoTime,
  },
  strict,
);

export const CancelFrameSchema = Type.Object(
  {
    type: Type.Literal("cancel"),
    job_id: Id,
    attempt: Attempt,
    /** "cancelled" (by the client), "timed_out", "lease_lost", … */
    reason: Code,
  },
  strict,
);

export const ACK_STATUSES = ["committed", "duplicate", "stale", "invalid"] as const;
export type AckStatus = (typeof ACK_STATUSES)[number];

export const AckFrameSchema = Type.Object(
  {
    type: Type.Literal("ack"),
    job_id: Id,
    attempt: Attempt,
    /** Which miner frame this acknowledges. */
    of: Type.Union([Type.Literal("result"), Type.Literal("fail"), Type.Literal("released")]),
    /**
     * committed: recorded now. duplicate: the same was recorded before (no-op).
     * stale: the attempt no longer holds the lease; discard it. invalid: chunks/sha256/size did
     * not match; the miner may resend.
     */
    status: Type.Union([Type.Literal("committed"), Type.Literal("duplicate"), Type.Literal("stale"), Type.Literal("invalid")]),
    message: Type.Optional(Message),
  },
  strict,
);

export const DrainFrameSchema = Type.Object(
  { type: Type.Literal("drain"), reason: Type.Optional(Code) },
  strict,
);

/**
 * The fatal error answering a hello whose key and miner name a live session of another miner
 * instance holds (protocol 5). The miner does not hot-loop on it: it waits its longest
 * reconnect delay before each new try.
 */
export const DUPLICATE_MINER = "duplicate_miner";

/** Sent by either side. `fatal: true` means the sender closes the connection next. */
export const ErrorFrameSchema = Type.Object(
  { type: Type.Literal("error"), code: Code, message: Message, fatal: Type.Boolean() },
  strict,
);

export type HelloFrame = Static<typeof HelloFrameSchema>;
export type PullFrame = Static<typeof PullFrameSchema>;
export type StartedFrame = Static<typeof StartedFrameSchema>;
export type ProgressFrame = Static<typeof ProgressFrameSchema>;
export type TextFrame = Static<typeof TextFrameSchema>;
export type HeartbeatFrame = Static<typeof HeartbeatFrameSchema>;
export type ResultChunkFrame = Static<typeof ResultChunkFrameSchema>;
export type ResultFrame = Static<typeof ResultFrameSchema>;
export type FailFrame = Static<typeof FailFrameSchema>;
export type ReleasedFrame = Static<typeof ReleasedFrameSchema>;
export type WelcomeFrame = Static<typeof WelcomeFrameSchema>;
export type AssignFrame = Static<typeof AssignFrameSchema>;
export type CancelFrame = Static<typeof CancelFrameSchema>;
export type AckFrame = Static<typeof AckFrameSchema>;
export type DrainFrame = Static<typeof DrainFrameSchema>;
export type ErrorFrame = Static<typeof ErrorFrameSchema>;

export type MinerFrame =
  | HelloFrame
  | PullFrame
  | StartedFrame
  | ProgressFrame
  | TextFrame
  | HeartbeatFrame
  | ResultChunkFrame
  | ResultFrame
  | FailFrame
  | ReleasedFrame
  | ErrorFrame;

export type CoordinatorFrame = WelcomeFrame | AssignFrame | CancelFrame | AckFrame | DrainFrame | ErrorFrame;

export const MINER_FRAME_SCHEMAS = {
  hello: HelloFrameSchema,
  pull: PullFrameSchema,
  started: StartedFrameSchema,
  progress: ProgressFrameSchema,
  text: TextFrameSchema,
  heartbeat: HeartbeatFrameSchema,
  result_chunk: ResultChunkFrameSchema,
  result: ResultFrameSchema,
  fail: FailFrameSchema,
  released: ReleasedFrameSchema,
  error: ErrorFrameSchema,
} as const;

export const COORDINATOR_FRAME_SCHEMAS = {
  welcome: WelcomeFrameSchema,
  assign: AssignFrameSchema,
  cancel: CancelFrameSchema,
  ack: AckFrameSchema,
  drain: DrainFrameSchema,
  error: ErrorFrameSchema,
} as const;

export type MinerFrameType = keyof typeof MINER_FRAME_SCHEMAS;
export type CoordinatorFrameType = keyof typeof COORDINATOR_FRAME_SCHEMAS;

// ---------------------------------------------------------------- parsing

/** Why a frame was refused; `code` is stable and goes into the error frame sent back. */
export interface FrameError {
  code: "frame_too_large" | "frame_not_json" | "frame_unknown_type" | "frame_invalid";
  message: string;
  /** The frame's `type` when it could be read. */
  type?: string;
}

export type ParseResult<F> = { ok: true; frame: F } | { ok: false; error: FrameError };

function compileAll<T extends Record<string, TSchema>>(schemas: T): Map<string, TypeCheck<TSchema>> {
  return new Map(Object.entries(schemas).map(([k, s]) => [k, TypeCompiler.Compile(s)]));
}

const minerChecks = compileAll(MINER_FRAME_SCHEMAS);
const coordinatorChecks = compileAll(COORDINATOR_FRAME_SCHEMAS);

/** Raw WebSocket message data as `ws` delivers it, or already-decoded text. */
export type RawFrame = string | Buffer | ArrayBuffer | Buffer[];

function rawText(raw: RawFrame): { text: string; bytes: number } {
  if (typeof raw === "string") return { text: raw, bytes: Buffer.byteLength(raw) };
  const buf = Array.isArray(raw) ? Buffer.concat(raw) : Buffer.isBuffer(raw) ? raw : Buffer.from(raw);
  return { text: buf.toString("utf8"), bytes: buf.length };
}

function semanticCheck(frame: { type: string } & Record<string, unknown>): string | undefined {
  if (frame.type === "result") {
    const hasOutput = frame.output !== undefined;
    const hasChunks = frame.chunks !== undefined;
    if (hasOutput === hasChunks) return "result needs exactly one of output or chunks";
    if (hasOutput && Buffer.byteLength(frame.output as string) > RESULT_INLINE_MAX_BYTES) {
      return `inline output over ${RESULT_INLINE_MAX_BYTES} bytes must be sent in chunks`;
    }
  }
  return undefined;
}

function parseWith<F>(checks: Map<string, TypeCheck<TSchema>>, raw: RawFrame | object): ParseResult<F> {
  let value: unknown = raw;
  if (typeof raw === "string" || Buffer.isBuffer(raw) || raw instanceof ArrayBuffer || Array.isArray(raw)) {
    const { text, bytes } = rawText(raw as RawFrame);
    if (bytes > MAX_FRAME_BYTES) {
      return { ok: false, error: { code: "frame_too_large", message: `frame of ${bytes} bytes is over ${MAX_FRAME_BYTES}` } };
    }
    try {
      value = JSON.parse(text) as unknown;
    } catch {
      return { ok: false, error: { code: "frame_not_json", message: "frame is not valid JSON" } };
    }
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    return { ok: false, error: { code: "frame_invalid", message: "frame must be a JSON object" } };
  }
  const type = (value as Record<string, unknown>).type;
  if (typeof type !== "string") {
    return { ok: false, error: { code: "frame_invalid", message: "frame has no string `type`" } };
  }
  const check = checks.get(type);
  if (check === undefined) {
    return {
      ok: false,
      error: { code: "frame_unknown_type", message: `unknown frame type "${type.slice(0, 64)}"`, type: type.slice(0, 64) },
    };
  }
  if (!check.Check(value)) {
    const first = check.Errors(value).First();
    const where = first === undefined ? "" : `${first.path || "/"}: ${first.message}`;
    return { ok: false, error: { code: "frame_invalid", message: `invalid ${type} frame: ${where}`, type } };
  }
  const semantic = semanticCheck(value as { type: string } & Record<string, unknown>);
  if (semantic !== undefined) {
    return { ok: false, error: { code: "frame_invalid", message: `invalid ${type} frame: ${semantic}`, type } };
  }
  return { ok: true, frame: value as F };
}

/** Validates a frame the coordinator received from a miner (raw WebSocket data or a parsed object). */
export function parseMinerFrame(raw: RawFrame | object): ParseResult<MinerFrame> {
  return parseWith<MinerFrame>(minerChecks, raw);
}

/** Validates a frame the miner received from the coordinator (raw WebSocket data or a parsed object). */
export function parseCoordinatorFrame(raw: RawFrame | object): ParseResult<CoordinatorFrame> {
  return parseWith<CoordinatorFrame>(coordinatorChecks, raw);
}

/** JSON text of a frame; both sides send only through this so a frame never exceeds the cap unnoticed. */
export function encodeFrame(frame: MinerFrame | CoordinatorFrame): string {
  return JSON.stringify(frame);
}

const STRICT_UTF8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/**
 * The output a result frame carries, checked: for chunked results the chunks (any order) must be
 * seq 0…chunks-1 exactly once, of the same (job_id, attempt, lease_token); the joined UTF-8
 * bytes must have `output_bytes` length and the `sha256`, and be valid UTF-8. The coordinator answers ack "invalid"
 * when this fails. Pure; shared so both sides agree on the rules.
 */
export function assembleResult(
  result: ResultFrame,
  chunks: readonly ResultChunkFrame[] = [],
): { ok: true; output: string; bytes: Buffer } | { ok: false; reason: string } {
  let bytes: Buffer;
  if (result.output !== undefined) {
    if (chunks.length > 0) return { ok: false, reason: "chunks sent for an inline result" };
    bytes = Buffer.from(result.output, "utf8");
  } else {
    const n = result.chunks ?? 0;
    const bySeq = new Map<number, ResultChunkFrame>();
    for (const c of chunks) {
      if (c.job_id !== result.job_id || c.attempt !== result.attempt || c.lease_token !== result.lease_token) {
        return { ok: false, reason: "chunk of another attempt" };
      }
      if (bySeq.has(c.seq)) return { ok: false, reason: `chunk ${c.seq} sent twice` };
      bySeq.set(c.seq, c);
    }
    const parts: Buffer[] = [];
    for (let seq = 0; seq < n; seq++) {
      const c = bySeq.get(seq);
      if (c === undefined) return { ok: false, reason: `chunk ${seq} missing` };
      parts.push(Buffer.from(c.data, "base64"));
    }
    if (bySeq.size !== n) return { ok: false, reason: "more chunks than announced" };
    bytes = Buffer.concat(parts);
  }
  if (bytes.length !== result.output_bytes) return { ok: false, reason: "output_bytes does not match" };
  if (createHash("sha256").update(bytes).digest("hex") !== result.sha256) return { ok: false, reason: "sha256 does not match" };
  // The output is text: its bytes must be the UTF-8 they claim to be, so what is stored, hashed
  // and served are the same bytes (invalid sequences would be replaced when served as text, and a
  // lone surrogate in an inline string is not UTF-8 at all).
  let output: string;
  try {
    output = STRICT_UTF8.decode(bytes);
  } catch {
    return { ok: false, reason: "the output is not valid UTF-8" };
  }
  if (result.output !== undefined && output !== result.output) return { ok: false, reason: "the output is not valid UTF-8 (a lone surrogate)" };
  return { ok: true, output, bytes };
}
