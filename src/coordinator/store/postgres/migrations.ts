import { AppError } from "../../../common/errors.js";
import type { PgDb } from "./pg-db.js";

/**
 * The PostgreSQL schema, in order; version i+1 is POSTGRES_MIGRATIONS[i]. Never edit a shipped
 * one: append. Times are epoch milliseconds (bigint). Applied under a session advisory lock, so
 * replicas that start together migrate once; a database whose schema is newer than this code is
 * refused at start, naming both versions.
 */
export const POSTGRES_MIGRATIONS: readonly string[] = [
  `
  CREATE TABLE jobs (
    seq bigserial PRIMARY KEY,
    id text NOT NULL UNIQUE,
    tenant text NOT NULL,
    model text NOT NULL,
    input text NOT NULL,
    input_file_id text,
    output_format text NOT NULL,
    destination text NOT NULL,
    requirements jsonb NOT NULL,
    priority text NOT NULL,
    priority_rank integer NOT NULL,
    timeout_seconds integer NOT NULL,
    parameters jsonb NOT NULL,
    status text NOT NULL,
    progress double precision NOT NULL DEFAULT 0,
    miner_id text,
    attempt integer NOT NULL DEFAULT 0,
    failures integer NOT NULL DEFAULT 0,
    max_attempts integer NOT NULL,
    lease_token text,
    lease_expires_at bigint,
    cancel_requested boolean NOT NULL DEFAULT false,
    created_at bigint NOT NULL,
    assigned_at bigint,
    started_at bigint,
    attempt_started_at bigint,
    completed_at bigint,
    not_before bigint NOT NULL DEFAULT 0,
    result jsonb,
    error_code text,
    error_message text,
    estimated_cost double precision NOT NULL,
    estimated_time_seconds double precision NOT NULL,
    idempotency_key text,
    request_hash text,
    -- The last event number of this job: bumped under the row's lock, so 1..n with no gaps.
    event_seq integer NOT NULL DEFAULT 0,
    -- An s3:// delivery claimed by a replica until then (re-drive), so replicas share the work.
    upload_claimed_until bigint
  );
  CREATE UNIQUE INDEX jobs_idempotency ON jobs (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL;
  -- The claim: queued jobs of the miner's models, best first.
  CREATE INDEX jobs_queued ON jobs (model, priority_rank DESC, seq) WHERE status = 'queued';
  -- The reaper and the leases of a miner.
  CREATE INDEX jobs_leased ON jobs (lease_expires_at) WHERE status IN ('assigned', 'running');
  CREATE INDEX jobs_leased_by ON jobs (miner_id) WHERE status IN ('assigned', 'running');
  CREATE INDEX jobs_tenant_created ON jobs (tenant, created_at DESC, seq DESC);
  CREATE INDEX jobs_tenant_completed ON jobs (tenant, completed_at DESC, seq DESC) WHERE completed_at IS NOT NULL;
  CREATE INDEX jobs_completed ON jobs (completed_at) WHERE status = 'completed';
  CREATE INDEX jobs_queued_created ON jobs (created_at) WHERE status = 'queued';
  CREATE INDEX jobs_pending_uploads ON jobs (completed_at) WHERE status = 'completed' AND destination LIKE 's3://%';

  CREATE TABLE job_events (
    job_id text NOT NULL,
    seq integer NOT NULL,
    type text NOT NULL,
    data jsonb NOT NULL,
    at bigint NOT NULL,
    PRIMARY KEY (job_id, seq)
  );

  CREATE TABLE api_keys (
    id text PRIMARY KEY,
    kind text NOT NULL CHECK (kind IN ('client', 'miner')),
    name text NOT NULL,
    tenant text NOT NULL,
    secret_hash bytea NOT NULL,
    created_at bigint NOT NULL,
    revoked_at bigint
  );

  CREATE TABLE files (
    id text PRIMARY KEY,
    tenant text NOT NULL,
    bytes bigint NOT NULL,
    sha256 text NOT NULL,
    created_at bigint NOT NULL,
    content text NOT NULL
  );
  CREATE INDEX files_created ON files (created_at);

  CREATE TABLE tenant_usage (
    tenant text PRIMARY KEY,
    file_bytes bigint NOT NULL DEFAULT 0,
    result_bytes bigint NOT NULL DEFAULT 0
  );

  -- Miners as the whole fleet sees them: which replica holds each one's session, since when,
  -- what it offers. epoch counts its sessions: a newer one fences an older one out.
  CREATE TABLE miners (
    id text PRIMARY KEY,
    key_id text NOT NULL,
    name text NOT NULL,
    replica text,
    epoch bigint NOT NULL DEFAULT 0,
    connected boolean NOT NULL DEFAULT false,
    connected_at bigint,
    last_seen_at bigint,
    gpus jsonb NOT NULL DEFAULT '[]',
    models jsonb NOT NULL DEFAULT '[]',
    slots integer NOT NULL DEFAULT 0,
    free_slots integer NOT NULL DEFAULT 0,
    draining boolean NOT NULL DEFAULT false
  );
  CREATE INDEX miners_connected ON miners (last_seen_at) WHERE connected;

  -- Rate-limit windows shared by every replica. UNLOGGED: no WAL, so a counter costs no fsync;
  -- a crash of the database forgets the current windows, which errs on the client's side.
  CREATE UNLOGGED TABLE rate_windows (
    key_id text NOT NULL,
    window_ms bigint NOT NULL,
    window_start bigint NOT NULL,
    count integer NOT NULL,
    PRIMARY KEY (key_id, window_ms)
  );

  -- One request against every window of a key: counted in all when each has room, refused
  -- (and counted in none) otherwise. Windows are fixed and aligned to the epoch.
  CREATE FUNCTION aitbc_rate_take(p_key text, p_now bigint, p_windows bigint[], p_limits integer[])
  RETURNS TABLE (allowed boolean, window_ms bigint, window_start bigint, used integer, lim integer)
  LANGUAGE plpgsql AS $$
  #variable_conflict use_column
  DECLARE
    i integer;
    ok boolean := true;
    start_ bigint;
    cur integer;
  BEGIN
    FOR i IN 1 .. array_length(p_windows, 1) LOOP
      start_ := (p_now / p_windows[i]) * p_windows[i];
      INSERT INTO rate_windows AS w (key_id, window_ms, window_start, count) VALUES (p_key, p_windows[i], start_, 0)
        ON CONFLICT (key_id, window_ms) DO UPDATE
          SET window_start = EXCLUDED.window_start,
              count = CASE WHEN w.window_start = EXCLUDED.window_start THEN w.count ELSE 0 END
        RETURNING w.count INTO cur;
      IF cur >= p_limits[i] THEN ok := false; END IF;
    END LOOP;
    FOR i IN 1 .. array_length(p_windows, 1) LOOP
      start_ := (p_now / p_windows[i]) * p_windows[i];
      IF ok THEN
        UPDATE rate_windows SET count = count + 1 WHERE key_id = p_key AND rate_windows.window_ms = p_windows[i] RETURNING count INTO cur;
      ELSE
        SELECT count INTO cur FROM rate_windows WHERE key_id = p_key AND rate_windows.window_ms = p_windows[i];
      END IF;
      allowed := ok; window_ms := p_windows[i]; window_start := start_; used := cur; lim := p_limits[i];
      RETURN NEXT;
    END LOOP;
  END $$;
  `,
  // Operators: a third key kind, the fleet's figures per miner and an operator's drain, retries
  // linked to the job they retry, every tenant's jobs by creation time, and recent failures.
  `
  ALTER TABLE api_keys DROP CONSTRAINT api_keys_kind_check;
  ALTER TABLE api_keys ADD CONSTRAINT api_keys_kind_check CHECK (kind IN ('client', 'miner', 'operator'));
  ALTER TABLE miners
    ADD COLUMN drained boolean NOT NULL DEFAULT false,
    ADD COLUMN jobs_done bigint NOT NULL DEFAULT 0,
    ADD COLUMN jobs_failed bigint NOT NULL DEFAULT 0,
    ADD COLUMN last_error jsonb,
    ADD COLUMN tokens_per_s double precision;
  ALTER TABLE jobs ADD COLUMN retry_of text;
  CREATE INDEX jobs_created ON jobs (created_at DESC, seq DESC);
  CREATE INDEX jobs_failures ON jobs (completed_at) WHERE status IN ('failed', 'timed_out');
  `,
  // Protocol 5: the miner process holding the session, so a second host with the same key and
  // name is refused instead of replacing it, on whichever replica it connects (NULL: a protocol
  // 4 miner, which cannot tell).
  `
  ALTER TABLE miners ADD COLUMN instance_id text;
  `,
  // Protocol 5 heartbeats: each GPU's utilisation and free VRAM, for the operators' fleet view.
  `
  ALTER TABLE miners ADD COLUMN gpu_load jsonb;
  `,
  // A submit counts its tenant's queued jobs (the queue cap): an index-only count of the tenant's
  // own queued rows instead of a filter over every queued one. (SQLite keeps counters instead; a
  // counter row per tenant and model would serialise every replica's submits and claims on it.)
  `
  CREATE INDEX jobs_queued_tenant ON jobs (tenant) WHERE status = 'queued';
  `,
];

/** The advisory lock key migrations run under (any int8; this one spells "aitbcmig"). */
const MIGRATION_LOCK = 0x61697462636d6967n;

/** Applies what is missing, once across replicas; refuses a schema newer than this code. */
export async function migrate(db: PgDb): Promise<{ applied: number[]; version: number }> {
  const client = await db.pool.connect();
  try {
    await client.query("SELECT pg_advisory_lock($1)", [MIGRATION_LOCK.toString()]);
    try {
      await client.query(`CREATE SCHEMA IF NOT EXISTS ${db.schema}`);
      await client.query("CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, applied_at bigint NOT NULL)");
      const rows = (await client.query<{ version: number }>("SELECT version FROM schema_migrations ORDER BY version")).rows;
      const have = new Set(rows.map((r) => r.version));
      const newest = rows.length === 0 ? 0 : Math.max(...rows.map((r) => r.version));
      if (newest > POSTGRES_MIGRATIONS.length) {
        throw new AppError(
          "schema_too_new",
          `the database schema is at version ${newest}, newer than this coordinator's ${POSTGRES_MIGRATIONS.length}: upgrade the coordinator (or point it at another database)`,
          { status: 500 },
        );
      }
      const applied: number[] = [];
      for (const [i, sql] of POSTGRES_MIGRATIONS.entries()) {
        const version = i + 1;
        if (have.has(version)) continue;
        await client.query("BEGIN");
        try {
          await client.query(sql);
          await client.query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)", [version, Date.now()]);
          await client.query("COMMIT");
        } catch (err) {
          await client.query("ROLLBACK");
          throw err;
        }
        applied.push(version);
      }
      return { applied, version: POSTGRES_MIGRATIONS.length };
    } finally {
      await client.query("SELECT pg_advisory_unlock($1)", [MIGRATION_LOCK.toString()]);
    }
  } finally {
    client.release();
  }
}
