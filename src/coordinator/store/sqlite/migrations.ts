/**
 * Schema migrations, applied in order inside a transaction each and recorded in
 * schema_migrations. Never edit a shipped migration: append a new one.
 * Times are integer milliseconds since the epoch (UTC).
 */
export const SQLITE_MIGRATIONS: readonly string[] = [
  `
  CREATE TABLE jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    tenant TEXT NOT NULL,
    model TEXT NOT NULL,
    input TEXT NOT NULL,
    input_file_id TEXT,
    output_format TEXT NOT NULL,
    destination TEXT NOT NULL,
    requirements TEXT NOT NULL,
    priority TEXT NOT NULL,
    priority_rank INTEGER NOT NULL,
    timeout_seconds INTEGER NOT NULL,
    parameters TEXT NOT NULL,
    status TEXT NOT NULL,
    progress REAL NOT NULL DEFAULT 0,
    miner_id TEXT,
    attempt INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    lease_token TEXT,
    lease_expires_at INTEGER,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    assigned_at INTEGER,
    started_at INTEGER,
    attempt_started_at INTEGER,
    completed_at INTEGER,
    not_before INTEGER NOT NULL DEFAULT 0,
    result TEXT,
    error_code TEXT,
    error_message TEXT,
    estimated_cost REAL NOT NULL,
    estimated_time_seconds REAL NOT NULL,
    idempotency_key TEXT,
    request_hash TEXT
  );
  CREATE UNIQUE INDEX jobs_idempotency ON jobs (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL;
  CREATE INDEX jobs_queue ON jobs (status, priority_rank DESC, seq);
  CREATE INDEX jobs_tenant_created ON jobs (tenant, created_at DESC, id DESC);
  CREATE INDEX jobs_tenant_completed ON jobs (tenant, completed_at DESC, id DESC);
  CREATE INDEX jobs_leases ON jobs (status, lease_expires_at);
  CREATE INDEX jobs_miner ON jobs (miner_id, status);

  CREATE TABLE job_events (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    type TEXT NOT NULL,
    data TEXT NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (job_id, seq)
  );

  CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('client', 'miner')),
    name TEXT NOT NULL,
    tenant TEXT NOT NULL,
    secret_hash BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
  );

  CREATE TABLE files (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    content TEXT NOT NULL
  );
  `,
  `
  CREATE INDEX jobs_queue_model ON jobs (status, model, priority_rank, seq);
  `,
  // Storage per tenant, kept in the transactions that add or remove files and results, so a
  // quota check is one row read; backfilled from what is stored. Retention scans by age.
  `
  CREATE TABLE tenant_usage (
    tenant TEXT PRIMARY KEY,
    file_bytes INTEGER NOT NULL DEFAULT 0,
    result_bytes INTEGER NOT NULL DEFAULT 0
  );
  INSERT INTO tenant_usage (tenant, file_bytes, result_bytes)
    SELECT tenant, SUM(f), SUM(r) FROM (
      SELECT tenant, bytes AS f, 0 AS r FROM files
      UNION ALL
      SELECT tenant, 0, json_extract(result, '$.bytes') FROM jobs WHERE status = 'completed' AND result IS NOT NULL
    ) GROUP BY tenant;
  CREATE INDEX files_created ON files (created_at);
  CREATE INDEX jobs_completed ON jobs (status, completed_at);
  `,
  // The fleet as the store sees it (one replica here; the same table as PostgreSQL's).
  `
  CREATE TABLE miners (
    id TEXT PRIMARY KEY,
    key_id TEXT NOT NULL,
    name TEXT NOT NULL,
    replica TEXT,
    epoch INTEGER NOT NULL DEFAULT 0,
    connected INTEGER NOT NULL DEFAULT 0,
    connected_at INTEGER,
    last_seen_at INTEGER,
    gpus TEXT NOT NULL DEFAULT '[]',
    models TEXT NOT NULL DEFAULT '[]',
    slots INTEGER NOT NULL DEFAULT 0,
    free_slots INTEGER NOT NULL DEFAULT 0,
    draining INTEGER NOT NULL DEFAULT 0
  );
  `,
  // Operators: a third key kind (SQLite cannot alter a CHECK: the table is rebuilt), the fleet's
  // figures per miner and an operator's drain, retries linked to the job they retry, and every
  // tenant's jobs by creation time.
  `
  CREATE TABLE api_keys_v5 (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('client', 'miner', 'operator')),
    name TEXT NOT NULL,
    tenant TEXT NOT NULL,
    secret_hash BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
  );
  INSERT INTO api_keys_v5 (id, kind, name, tenant, secret_hash, created_at, revoked_at)
    SELECT id, kind, name, tenant, secret_hash, created_at, revoked_at FROM api_keys;
  DROP TABLE api_keys;
  ALTER TABLE api_keys_v5 RENAME TO api_keys;
  ALTER TABLE miners ADD COLUMN drained INTEGER NOT NULL DEFAULT 0;
  ALTER TABLE miners ADD COLUMN jobs_done INTEGER NOT NULL DEFAULT 0;
  ALTER TABLE miners ADD COLUMN jobs_failed INTEGER NOT NULL DEFAULT 0;
  ALTER TABLE miners ADD COLUMN last_error TEXT;
  ALTER TABLE miners ADD COLUMN tokens_per_s REAL;
  ALTER TABLE jobs ADD COLUMN retry_of TEXT;
  CREATE INDEX jobs_created ON jobs (created_at DESC, seq DESC);
  `,
  // Protocol 5: the miner process holding the session, so a second host with the same key and
  // name is refused instead of replacing it (NULL: a protocol 4 miner, which cannot tell).
  `
  ALTER TABLE miners ADD COLUMN instance_id TEXT;
  `,
  // Protocol 5 heartbeats: each GPU's utilisation and free VRAM, for the operators' fleet view.
  `
  ALTER TABLE miners ADD COLUMN gpu_load TEXT;
  `,
  // Queued jobs counted per (tenant, model) by triggers, in the same transaction as the change:
  // every submit reads the tenant's count (the queue cap) and the model's (the estimate), and a
  // COUNT(*) over the queued rows grew with the queue (most of a submit's time with 10,000
  // queued; \`npm run bench:api\`). A later migration that rebuilds \`jobs\` must recreate these.
  `
  CREATE TABLE queue_counts (
    tenant TEXT NOT NULL,
    model TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (tenant, model)
  ) WITHOUT ROWID;
  INSERT INTO queue_counts (tenant, model, n) SELECT tenant, model, COUNT(*) FROM jobs WHERE status = 'queued' GROUP BY tenant, model;
  CREATE TRIGGER jobs_queued_insert AFTER INSERT ON jobs WHEN NEW.status = 'queued' BEGIN
    INSERT INTO queue_counts (tenant, model, n) VALUES (NEW.tenant, NEW.model, 1) ON CONFLICT (tenant, model) DO UPDATE SET n = n + 1;
  END;
  CREATE TRIGGER jobs_queued_enter AFTER UPDATE OF status ON jobs WHEN OLD.status <> 'queued' AND NEW.status = 'queued' BEGIN
    INSERT INTO queue_counts (tenant, model, n) VALUES (NEW.tenant, NEW.model, 1) ON CONFLICT (tenant, model) DO UPDATE SET n = n + 1;
  END;
  CREATE TRIGGER jobs_queued_leave AFTER UPDATE OF status ON jobs WHEN OLD.status = 'queued' AND NEW.status <> 'queued' BEGIN
    UPDATE queue_counts SET n = n - 1 WHERE tenant = OLD.tenant AND model = OLD.model;
  END;
  CREATE TRIGGER jobs_queued_delete AFTER DELETE ON jobs WHEN OLD.status = 'queued' BEGIN
    UPDATE queue_counts SET n = n - 1 WHERE tenant = OLD.tenant AND model = OLD.model;
  END;
  `,
];
