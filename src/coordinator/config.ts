import path from "node:path";
import { Type, type Static } from "@sinclair/typebox";
import { Duration, Size, compileField, configError, loadConfig, type ConfigProblem, type LoadConfigOptions } from "../common/config.js";
import { formatDuration, parseDuration, parseSize } from "../common/duration.js";
import { LOG_FORMATS, type LogFormat } from "../common/log-format.js";
import type { LogLevel } from "../common/logger.js";

/**
 * config/coordinator.toml: the raw schema (as written in the file, human units) and its
 * compiled form {@link CoordinatorConfig} (milliseconds, bytes, resolved paths).
 * Environment variables: AITBC_COORDINATOR_<SECTION>_<KEY>, e.g. AITBC_COORDINATOR_SERVER_PORT.
 */
const section = { additionalProperties: false, default: {} } as const;

export const CoordinatorConfigSchema = Type.Object(
  {
    server: Type.Object(
      {
        /** Address to listen on. Default "127.0.0.1". */
        host: Type.String({ default: "127.0.0.1" }),
        /** TCP port; 0 picks a free one. Default 8080. */
        port: Type.Integer({ minimum: 0, maximum: 65535, default: 8080 }),
        /** Largest request body; larger ones get 413. Default "1MiB". */
        body_limit: Size("1MiB", "request body limit"),
        /** Public base URL printed in hints (e.g. behind a proxy). Default "" = http://host:port. */
        public_url: Type.String({ default: "" }),
        /** Longest a client may take to send a whole request (headers and body); then 408 and the socket closes. Streams and WebSockets are not cut by it. Default "30s". */
        request_timeout: Duration("30s", "time to receive a whole request"),
        /** Longest a client may take to send the request headers. Default "10s". */
        headers_timeout: Duration("10s", "time to receive request headers"),
        /** An idle keep-alive connection is closed after this long. Default "5s". */
        keep_alive_timeout: Duration("5s", "idle keep-alive timeout"),
      },
      section,
    ),
    storage: Type.Object(
      {
        /** "sqlite" (one coordinator, the file data_dir/coordinator.db) or "postgres" (several replicas on one database, `url`). Default "sqlite". */
        backend: Type.Union([Type.Literal("sqlite"), Type.Literal("postgres")], { default: "sqlite" }),
        /** PostgreSQL connection URL, e.g. "postgres://aitbc@db:5432/aitbc" (env AITBC_COORDINATOR_STORAGE_URL). Default "". */
        url: Type.String({ default: "" }),
        /** PostgreSQL schema the tables live in. Default "public". */
        schema: Type.String({ default: "public", pattern: "^[a-z_][a-z0-9_]*$" }),
        /** PostgreSQL connections per replica. Default 10. */
        pool_size: Type.Integer({ minimum: 1, maximum: 500, default: 10 }),
        /** Directory for the SQLite database and stored results (relative to the working directory). Default "data". */
        data_dir: Type.String({ default: "data" }),
        /** This replica's name in the miners table, logs and /readyz; "" = <hostname>:<port>. Default "". */
        replica: Type.String({ default: "", maxLength: 128 }),
      },
      section,
    ),
    log: Type.Object(
      {
        /** fatal | error | warn | info | debug | trace | silent. Default "info". */
        level: Type.Union(
          ["fatal", "error", "warn", "info", "debug", "trace", "silent"].map((l) => Type.Literal(l)),
          { default: "info" },
        ),
        /** auto | json | pretty: "auto" is pretty on a terminal and JSON otherwise (env AITBC_COORDINATOR_LOG_FORMAT, flag --log-format). Default "auto". */
        format: Type.Union(
          LOG_FORMATS.map((f) => Type.Literal(f)),
          { default: "auto" },
        ),
      },
      section,
    ),
    limits: Type.Object(
      {
        /** Requests per key in the short window (the API reference: 60/minute). Default 60. */
        requests_per_minute: Type.Integer({ minimum: 1, default: 60 }),
        /** Requests per key in the long window (the API reference: 1000/hour). Default 1000. */
        requests_per_hour: Type.Integer({ minimum: 1, default: 1000 }),
        /** Length of the short window (tests shorten it). Default "1m". */
        minute_window: Duration("1m", "short rate-limit window"),
        /** Length of the long window. Default "1h". */
        hour_window: Duration("1h", "long rate-limit window"),
        /** Jobs one tenant may have queued at once; more get 429. Default 1000. */
        max_queued_jobs_per_tenant: Type.Integer({ minimum: 1, default: 1000 }),
        /** Largest file accepted by POST /v1/files. Default "1MiB". */
        max_file_size: Size("1MiB", "upload size cap"),
        /** Largest prompt (input string or file), in characters. Default 131072. */
        max_input_chars: Type.Integer({ minimum: 1, maximum: 131072, default: 131072 }),
        /** Largest `limit` of list and history pages. Default 100. */
        max_page_size: Type.Integer({ minimum: 1, maximum: 1000, default: 100 }),
        /** Largest `timeout_seconds` a job may ask for. Default 86400. */
        max_timeout_seconds: Type.Integer({ minimum: 1, default: 86400 }),
        /** Event streams (GET /v1/jobs/{id}/events) one key may hold open at once; more get 429. Default 20. */
        max_streams_per_key: Type.Integer({ minimum: 1, default: 20 }),
        /** Bytes of uploaded files one tenant may keep; an upload past it gets 429 storage_quota_exceeded. Default "100MiB". */
        max_file_bytes_per_tenant: Size("100MiB", "uploaded files per tenant"),
        /** Bytes of stored results one tenant may keep; a submit past it gets 429 storage_quota_exceeded. Default "1GiB". */
        max_result_bytes_per_tenant: Size("1GiB", "stored results per tenant"),
        /** How often open connections (miner WebSockets, event streams) are checked for a revoked key. Default "1s". */
        revocation_check: Duration("1s", "revocation check interval"),
      },
      section,
    ),
    scheduler: Type.Object(
      {
        /** A lease not renewed (progress/heartbeat) for this long expires and the job is requeued. Default "30s". */
        lease_ttl: Duration("30s", "lease time to live"),
        /** How often miners send heartbeats (told in the welcome). Default "10s". */
        heartbeat: Duration("10s", "miner heartbeat interval"),
        /** Attempts a job gets (lost leases and retryable failures count) before it fails. Default 3. */
        max_attempts: Type.Integer({ minimum: 1, maximum: 100, default: 3 }),
        /** A queued job no miner picked up within this time ends `expired`. Default "24h". */
        queue_ttl: Duration("24h", "queue time to live"),
        /** How often the reaper looks for expired leases, timeouts and queue expiry. Default "1s". */
        reap_interval: Duration("1s", "reaper interval"),
        /** Delay before a requeued job may be assigned again (grows with failures). Default "1s". */
        requeue_backoff: Duration("1s", "requeue backoff"),
        /** Default `timeout_seconds` of a job that sets none. Default 3600. */
        default_timeout_seconds: Type.Integer({ minimum: 1, default: 3600 }),
        /** Answer 422 to a job no connected miner can run (model or requirements), instead of queueing it with a waiting_reason. Default false. */
        reject_unservable: Type.Boolean({ default: false }),
      },
      section,
    ),
    openai: Type.Object(
      {
        /** A client that disconnects from a streamed POST /v1/completions cancels its job (a replica shutting down does not). Default true. */
        cancel_on_disconnect: Type.Boolean({ default: true }),
      },
      section,
    ),
    admin: Type.Object(
      {
        /** Operators see prompts and outputs (job input, live text, downloads) on /v1/admin and the dashboard; otherwise only metadata. Default false. */
        show_outputs: Type.Boolean({ default: false }),
        /** How long a dashboard login lasts (the session cookie's lifetime). Default "1h". */
        session_ttl: Duration("1h", "dashboard session lifetime"),
        /** Requests per minute one operator key may make (a live dashboard polls every 2 s). Default 600. */
        requests_per_minute: Type.Integer({ minimum: 1, default: 600 }),
        /** Requests per hour one operator key may make. Default 20000. */
        requests_per_hour: Type.Integer({ minimum: 1, default: 20000 }),
      },
      section,
    ),
    gateway: Type.Object(
      {
        /** Pings a miner misses in a row (one per scheduler.heartbeat) before its connection is dropped. Default 2. */
        max_missed_pongs: Type.Integer({ minimum: 1, maximum: 100, default: 2 }),
        /** WebSocket connections the gateway holds at once; more are refused with 503. Default 10000. */
        max_connections: Type.Integer({ minimum: 1, default: 10000 }),
        /** WebSocket connections one miner key may hold at once; more are refused with 429. Default 16. */
        max_connections_per_key: Type.Integer({ minimum: 1, default: 16 }),
        /** Frames per second a connection may send on average (a token bucket); past it: an error frame, then a close. Default 200. */
        frame_rate: Type.Number({ exclusiveMinimum: 0, default: 200 }),
        /** Frames a connection may send in a burst above frame_rate. Default 500. */
        frame_burst: Type.Integer({ minimum: 1, default: 500 }),
        /** Bytes per second a connection may send on average (a token bucket, beside the frame one). Default "1MiB". */
        byte_rate: Size("1MiB", "bytes per second per connection"),
        /** Bytes a connection may send in a burst above byte_rate (a whole 48 MiB result fits). Default "64MiB". */
        byte_burst: Size("64MiB", "byte burst per connection"),
        /** After a connection of a key is closed for its frame budget, that key's new connections are refused (429) for this long. Default "10s". */
        rate_limit_cooldown: Duration("10s", "cool-down after a frame-budget close"),
        /** Result chunk bytes one connection may have buffered (awaiting their result frame). Default "64MiB". */
        max_buffered_result_bytes_per_connection: Size("64MiB", "buffered result chunks per connection"),
        /** Result chunk bytes all connections together may have buffered. Default "512MiB". */
        max_buffered_result_bytes: Size("512MiB", "buffered result chunks in total"),
        /** A hello's slots above this are clamped (logged). Default 64. */
        max_slots: Type.Integer({ minimum: 1, maximum: 4096, default: 64 }),
        /** A GPU's reported VRAM above this is clamped (logged). Default "1TiB". */
        max_gpu_vram: Size("1TiB", "largest plausible VRAM per GPU"),
        /** Reported decode speeds above this are clamped before they reach clients or estimates, tokens/s. Default 100000. */
        max_tokens_per_second: Type.Number({ exclusiveMinimum: 0, default: 100000 }),
      },
      section,
    ),
    results: Type.Object(
      {
        /** "local" (data_dir/results) or "s3" (the bucket below, through the [s3] endpoint and credentials; required with a postgres store). Default "local". */
        backend: Type.Union([Type.Literal("local"), Type.Literal("s3")], { default: "local" }),
        /** Bucket for results when backend = "s3" (env AITBC_COORDINATOR_RESULTS_BUCKET). Default "". */
        bucket: Type.String({ default: "" }),
        /** Key prefix inside the bucket, e.g. "aitbc/" (results go under <prefix>results/<job_id>/). Default "". */
        prefix: Type.String({ default: "", maxLength: 512 }),
        /** Stored results and uploaded files older than this are deleted by a sweep (the job record stays and says its result expired); "0" keeps them forever. Default "30d". */
        retention: Duration("30d", "result and file retention"),
        /** How often the retention sweep runs. Default "1h". */
        retention_sweep: Duration("1h", "retention sweep interval"),
      },
      section,
    ),
    estimates: Type.Object(
      {
        /** Assumed decode speed of a model until miners report one, tokens/s. Default 20. */
        default_tokens_per_second: Type.Number({ exclusiveMinimum: 0, default: 20 }),
        /** Per-model decode speed, tokens/s, e.g. { "tiny-gpt2" = 400 }. Default {}. */
        tokens_per_second: Type.Record(Type.String(), Type.Number({ exclusiveMinimum: 0 }), { default: {} }),
        /** Fixed overhead per job (queueing, load, upload), seconds, until miners report results. Default 2. */
        overhead_seconds: Type.Number({ minimum: 0, default: 2 }),
        /** Estimate from what miners report (decode speed, per-job overhead, slot time per job; per model and GPU type); false: config only. Default true. */
        observe: Type.Boolean({ default: true }),
        /** Weight of each new result in the observed exponentially weighted means, (0, 1]. Default 0.2. */
        observed_weight: Type.Number({ exclusiveMinimum: 0, maximum: 1, default: 0.2 }),
        /** Observations not refreshed for this long are forgotten (config again). Default "1h". */
        observed_max_age: Duration("1h", "how long an observed speed is kept without a new result"),
      },
      section,
    ),
    pricing: Type.Object(
      {
        /** Price per 1000 generated tokens (max_new_tokens), by model; "default" for the rest. Default { default = 0.002 }. */
        per_1k_tokens: Type.Record(Type.String(), Type.Number({ minimum: 0 }), { default: { default: 0.002 } }),
        /** Price per GPU-hour of estimated run time, by requested gpu_type; "default" when a GPU type is requested but not listed. Default {}. */
        per_gpu_hour: Type.Record(Type.String(), Type.Number({ minimum: 0 }), { default: {} }),
      },
      section,
    ),
    s3: Type.Object(
      {
        /** S3 API endpoint URL (MinIO, s3rver, …). Default "" = AWS for `region`. */
        endpoint: Type.String({ default: "" }),
        /** Region the client signs for. Default "us-east-1". */
        region: Type.String({ minLength: 1, default: "us-east-1" }),
        /** Access key id. Default "" (then the AWS SDK's own credential chain is used). */
        access_key_id: Type.String({ default: "" }),
        /** Secret access key; prefer the environment: AITBC_COORDINATOR_S3_SECRET_ACCESS_KEY. Default "". */
        secret_access_key: Type.String({ default: "" }),
        /** Path-style URLs (endpoint/bucket/key) as MinIO and s3rver need; false = virtual-hosted. Default true. */
        force_path_style: Type.Boolean({ default: true }),
        /** Tries per upload before the job's result records the failure (a restart tries again). Default 5. */
        upload_attempts: Type.Integer({ minimum: 1, maximum: 100, default: 5 }),
        /** First delay between tries; it doubles (with jitter) up to upload_backoff_max. Default "1s". */
        upload_backoff: Duration("1s", "first upload retry delay"),
        /** Longest delay between tries. Default "30s". */
        upload_backoff_max: Duration("30s", "longest upload retry delay"),
        /** How often uploads not done yet (a failed round, or one a crashed replica left) are tried again. Default "5m". */
        redrive_interval: Duration("5m", "pending upload re-drive interval"),
      },
      section,
    ),
    tenants: Type.Record(
      Type.String(),
      Type.Object(
        {
          /** Buckets this tenant may name in `output_config.destination` ("s3://bucket/prefix"). Default []. */
          s3_buckets: Type.Array(Type.String({ minLength: 3, maxLength: 63 }), { default: [] }),
        },
        { additionalProperties: false },
      ),
      { default: {}, description: "Per-tenant settings, [tenants.<name>]." },
    ),
  },
  { additionalProperties: false },
);

export type CoordinatorConfigRaw = Static<typeof CoordinatorConfigSchema>;

export interface CoordinatorConfig {
  file: string | undefined;
  server: {
    host: string;
    port: number;
    bodyLimit: number;
    publicUrl: string;
    requestTimeoutMs: number;
    headersTimeoutMs: number;
    keepAliveTimeoutMs: number;
  };
  dataDir: string;
  storage: { backend: "sqlite" | "postgres"; url: string; schema: string; poolSize: number; replica: string };
  logLevel: LogLevel;
  logFormat: LogFormat;
  limits: {
    perMinute: number;
    perHour: number;
    minuteWindowMs: number;
    hourWindowMs: number;
    maxQueuedPerTenant: number;
    maxFileBytes: number;
    maxInputChars: number;
    maxPageSize: number;
    maxTimeoutSeconds: number;
    maxStreamsPerKey: number;
    maxFileBytesPerTenant: number;
    maxResultBytesPerTenant: number;
    revocationCheckMs: number;
  };
  gateway: {
    maxMissedPongs: number;
    maxConnections: number;
    maxConnectionsPerKey: number;
    frameRate: number;
    frameBurst: number;
    byteRate: number;
    byteBurst: number;
    rateLimitCooldownMs: number;
    maxBufferedBytesPerConnection: number;
    maxBufferedBytes: number;
    maxSlots: number;
    maxGpuVramMb: number;
    maxTokensPerSecond: number;
  };
  results: { backend: "local" | "s3"; bucket: string; prefix: string; retentionMs: number; retentionSweepMs: number };
  scheduler: {
    leaseTtlMs: number;
    heartbeatMs: number;
    maxAttempts: number;
    queueTtlMs: number;
    reapIntervalMs: number;
    requeueBackoffMs: number;
    defaultTimeoutSeconds: number;
    rejectUnservable: boolean;
  };
  openai: { cancelOnDisconnect: boolean };
  admin: { showOutputs: boolean; sessionTtlMs: number; perMinute: number; perHour: number };
  estimates: {
    defaultTokensPerSecond: number;
    tokensPerSecond: Record<string, number>;
    overheadSeconds: number;
    observe: boolean;
    observedWeight: number;
    observedMaxAgeMs: number;
  };
  pricing: { per1kTokens: Record<string, number>; perGpuHour: Record<string, number> };
  tenants: Record<string, { s3Buckets: string[] }>;
  s3: {
    endpoint: string;
    region: string;
    accessKeyId: string;
    secretAccessKey: string;
    forcePathStyle: boolean;
    uploadAttempts: number;
    uploadBackoffMs: number;
    uploadBackoffMaxMs: number;
    redriveMs: number;
  };
}

/**
 * Keys that only make sense together: a postgres store with S3 results, each with what it needs,
 * and timings that contradict each other. `usable(keys…)` is false for keys that are invalid on
 * their own (the loader reports those), so a check never parses a bad value.
 */
export function coordinatorCrossChecks(raw: CoordinatorConfigRaw, usable: (...keys: string[]) => boolean = () => true): ConfigProblem[] {
  const out: ConfigProblem[] = [];
  const ms = (v: string | number): number => parseDuration(v);
  const bytes = (v: string | number): number => parseSize(v);
  if (usable("storage.backend", "storage.url", "results.backend") && raw.storage.backend === "postgres") {
    if (raw.storage.url === "") {
      out.push({ key: "storage.url", related: ["storage.backend"], message: 'storage.backend = "postgres" needs a URL, e.g. postgres://aitbc@db:5432/aitbc (or AITBC_COORDINATOR_STORAGE_URL)' });
    }
    if (raw.results.backend !== "s3") {
      out.push({
        key: "results.backend",
        related: ["storage.backend"],
        message: 'storage.backend = "postgres" needs results.backend = "s3": replicas share no disk, so a result one replica stores must be readable by every other',
      });
    }
  }
  if (usable("results.backend", "results.bucket") && raw.results.backend === "s3" && raw.results.bucket === "") {
    out.push({ key: "results.bucket", related: ["results.backend"], message: 'results.backend = "s3" needs a bucket (or AITBC_COORDINATOR_RESULTS_BUCKET)' });
  }
  // A lease is renewed by the first heartbeat (or progress) at least a third of its TTL after the
  // last renewal, so it can go TTL/3 + one heartbeat unrenewed: a TTL of 1.5 heartbeats or less
  // expires leases of miners that are working and connected.
  if (usable("scheduler.lease_ttl", "scheduler.heartbeat")) {
    const ttl = ms(raw.scheduler.lease_ttl);
    const hb = ms(raw.scheduler.heartbeat);
    if (ttl <= 1.5 * hb) {
      out.push({
        key: "scheduler.lease_ttl",
        related: ["scheduler.heartbeat"],
        message: `${formatDuration(ttl)} is not longer than 1.5 × scheduler.heartbeat (${formatDuration(hb)}): leases of working miners would expire between heartbeats; make it at least ${formatDuration(3 * hb)} (3 heartbeats, as the defaults 30s and 10s), or shorten the heartbeat`,
      });
    }
  }
  if (usable("limits.minute_window", "limits.hour_window") && ms(raw.limits.minute_window) >= ms(raw.limits.hour_window)) {
    out.push({ key: "limits.minute_window", related: ["limits.hour_window"], message: `the short window (${formatDuration(ms(raw.limits.minute_window))}) must be shorter than limits.hour_window (${formatDuration(ms(raw.limits.hour_window))})` });
  }
  if (usable("server.headers_timeout", "server.request_timeout") && ms(raw.server.headers_timeout) > ms(raw.server.request_timeout)) {
    out.push({ key: "server.headers_timeout", related: ["server.request_timeout"], message: `${formatDuration(ms(raw.server.headers_timeout))} is longer than server.request_timeout (${formatDuration(ms(raw.server.request_timeout))}), which bounds the whole request, headers included` });
  }
  if (usable("s3.upload_backoff", "s3.upload_backoff_max") && ms(raw.s3.upload_backoff) > ms(raw.s3.upload_backoff_max)) {
    out.push({ key: "s3.upload_backoff", related: ["s3.upload_backoff_max"], message: `the first delay (${formatDuration(ms(raw.s3.upload_backoff))}) is longer than s3.upload_backoff_max (${formatDuration(ms(raw.s3.upload_backoff_max))})` });
  }
  if (
    usable("gateway.max_buffered_result_bytes_per_connection", "gateway.max_buffered_result_bytes") &&
    bytes(raw.gateway.max_buffered_result_bytes_per_connection) > bytes(raw.gateway.max_buffered_result_bytes)
  ) {
    out.push({ key: "gateway.max_buffered_result_bytes_per_connection", related: ["gateway.max_buffered_result_bytes"], message: "is more than gateway.max_buffered_result_bytes, the cap for all connections together" });
  }
  return out;
}

export function compileCoordinatorConfig(raw: CoordinatorConfigRaw, file: string | undefined): CoordinatorConfig {
  const problems = coordinatorCrossChecks(raw);
  if (problems.length > 0) throw configError(file, problems);
  const d = (key: string, v: string | number): number => compileField(file, key, () => parseDuration(v));
  const s = (key: string, v: string | number): number => compileField(file, key, () => parseSize(v));
  return {
    file,
    server: {
      host: raw.server.host,
      port: raw.server.port,
      bodyLimit: s("server.body_limit", raw.server.body_limit),
      publicUrl: raw.server.public_url,
      requestTimeoutMs: d("server.request_timeout", raw.server.request_timeout),
      headersTimeoutMs: d("server.headers_timeout", raw.server.headers_timeout),
      keepAliveTimeoutMs: d("server.keep_alive_timeout", raw.server.keep_alive_timeout),
    },
    dataDir: path.resolve(raw.storage.data_dir),
    storage: { backend: raw.storage.backend, url: raw.storage.url, schema: raw.storage.schema, poolSize: raw.storage.pool_size, replica: raw.storage.replica },
    logLevel: raw.log.level as LogLevel,
    logFormat: raw.log.format,
    limits: {
      perMinute: raw.limits.requests_per_minute,
      perHour: raw.limits.requests_per_hour,
      minuteWindowMs: d("limits.minute_window", raw.limits.minute_window),
      hourWindowMs: d("limits.hour_window", raw.limits.hour_window),
      maxQueuedPerTenant: raw.limits.max_queued_jobs_per_tenant,
      maxFileBytes: s("limits.max_file_size", raw.limits.max_file_size),
      maxInputChars: raw.limits.max_input_chars,
      maxPageSize: raw.limits.max_page_size,
      maxTimeoutSeconds: raw.limits.max_timeout_seconds,
      maxStreamsPerKey: raw.limits.max_streams_per_key,
      maxFileBytesPerTenant: s("limits.max_file_bytes_per_tenant", raw.limits.max_file_bytes_per_tenant),
      maxResultBytesPerTenant: s("limits.max_result_bytes_per_tenant", raw.limits.max_result_bytes_per_tenant),
      revocationCheckMs: d("limits.revocation_check", raw.limits.revocation_check),
    },
    gateway: {
      maxMissedPongs: raw.gateway.max_missed_pongs,
      maxConnections: raw.gateway.max_connections,
      maxConnectionsPerKey: raw.gateway.max_connections_per_key,
      frameRate: raw.gateway.frame_rate,
      frameBurst: raw.gateway.frame_burst,
      byteRate: s("gateway.byte_rate", raw.gateway.byte_rate),
      byteBurst: s("gateway.byte_burst", raw.gateway.byte_burst),
      rateLimitCooldownMs: d("gateway.rate_limit_cooldown", raw.gateway.rate_limit_cooldown),
      maxBufferedBytesPerConnection: s("gateway.max_buffered_result_bytes_per_connection", raw.gateway.max_buffered_result_bytes_per_connection),
      maxBufferedBytes: s("gateway.max_buffered_result_bytes", raw.gateway.max_buffered_result_bytes),
      maxSlots: raw.gateway.max_slots,
      maxGpuVramMb: Math.floor(s("gateway.max_gpu_vram", raw.gateway.max_gpu_vram) / 1024 ** 2),
      maxTokensPerSecond: raw.gateway.max_tokens_per_second,
    },
    results: {
      backend: raw.results.backend,
      bucket: raw.results.bucket,
      prefix: raw.results.prefix,
      retentionMs: d("results.retention", raw.results.retention),
      retentionSweepMs: d("results.retention_sweep", raw.results.retention_sweep),
    },
    scheduler: {
      leaseTtlMs: d("scheduler.lease_ttl", raw.scheduler.lease_ttl),
      heartbeatMs: d("scheduler.heartbeat", raw.scheduler.heartbeat),
      maxAttempts: raw.scheduler.max_attempts,
      queueTtlMs: d("scheduler.queue_ttl", raw.scheduler.queue_ttl),
      reapIntervalMs: d("scheduler.reap_interval", raw.scheduler.reap_interval),
      requeueBackoffMs: d("scheduler.requeue_backoff", raw.scheduler.requeue_backoff),
      defaultTimeoutSeconds: raw.scheduler.default_timeout_seconds,
      rejectUnservable: raw.scheduler.reject_unservable,
    },
    openai: { cancelOnDisconnect: raw.openai.cancel_on_disconnect },
    admin: {
      showOutputs: raw.admin.show_outputs,
      sessionTtlMs: d("admin.session_ttl", raw.admin.session_ttl),
      perMinute: raw.admin.requests_per_minute,
      perHour: raw.admin.requests_per_hour,
    },
    estimates: {
      defaultTokensPerSecond: raw.estimates.default_tokens_per_second,
      tokensPerSecond: raw.estimates.tokens_per_second,
      overheadSeconds: raw.estimates.overhead_seconds,
      observe: raw.estimates.observe,
      observedWeight: raw.estimates.observed_weight,
      observedMaxAgeMs: d("estimates.observed_max_age", raw.estimates.observed_max_age),
    },
    pricing: { per1kTokens: raw.pricing.per_1k_tokens, perGpuHour: raw.pricing.per_gpu_hour },
    tenants: Object.fromEntries(Object.entries(raw.tenants).map(([k, v]) => [k, { s3Buckets: v.s3_buckets }])),
    s3: {
      endpoint: raw.s3.endpoint,
      region: raw.s3.region,
      accessKeyId: raw.s3.access_key_id,
      secretAccessKey: raw.s3.secret_access_key,
      forcePathStyle: raw.s3.force_path_style,
      uploadAttempts: raw.s3.upload_attempts,
      uploadBackoffMs: d("s3.upload_backoff", raw.s3.upload_backoff),
      uploadBackoffMaxMs: d("s3.upload_backoff_max", raw.s3.upload_backoff_max),
      redriveMs: Math.max(1_000, d("s3.redrive_interval", raw.s3.redrive_interval)),
    },
  };
}

/** Loads config/coordinator.toml (optional when not named), environment and flag overrides. */
export function loadCoordinatorConfig(
  file: string | undefined,
  options: Pick<LoadConfigOptions, "env" | "overrides"> & { optional?: boolean } = {},
): CoordinatorConfig {
  const loaded = loadConfig(CoordinatorConfigSchema, {
    file,
    optional: options.optional ?? false,
    envPrefix: "COORDINATOR",
    crossChecks: coordinatorCrossChecks,
    ...(options.env === undefined ? {} : { env: options.env }),
    ...(options.overrides === undefined ? {} : { overrides: options.overrides }),
  });
  return compileCoordinatorConfig(loaded.config, file);
}
