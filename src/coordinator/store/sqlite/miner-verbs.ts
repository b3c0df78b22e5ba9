import { toMiner, type MinerRow } from "../job-row.js";
import type { MinerRecord, MinerSessionOpened, MinerSessionOpening, MinerTouch } from "../job-store.js";
import type { SqliteDb } from "./sqlite-db.js";

/** The miners table on SQLite: one replica's fleet, written at hello, refreshed each heartbeat. */

/** See JobStore.openMinerSession: the upsert's WHERE refuses a live session of another instance. */
export function openMinerSession(db: SqliteDb, m: MinerSessionOpening, now: number, liveSince: number): MinerSessionOpened {
  return db.tx(() => {
    const r = db
      .sql(
        `INSERT INTO miners (id, key_id, name, replica, epoch, connected, connected_at, last_seen_at, gpus, models, slots, free_slots, draining, instance_id)
         VALUES (@id, @keyId, @name, @replica, 1, 1, @now, @now, @gpus, @models, @slots, @slots, 0, @instanceId)
         ON CONFLICT (id) DO UPDATE SET replica = @replica, epoch = epoch + 1, connected = 1, connected_at = @now, last_seen_at = @now,
           gpus = @gpus, models = @models, slots = @slots, free_slots = @slots, draining = 0, instance_id = @instanceId, gpu_load = NULL
         WHERE NOT (miners.connected = 1 AND miners.last_seen_at >= @liveSince
                    AND miners.instance_id IS NOT NULL AND @instanceId IS NOT NULL AND miners.instance_id <> @instanceId)
         RETURNING epoch`,
      )
      .get({ ...m, now, liveSince, gpus: JSON.stringify(m.gpus), models: JSON.stringify(m.models) }) as { epoch: number } | undefined;
    if (r !== undefined) return { opened: true, epoch: r.epoch };
    const h = db.sql("SELECT instance_id, replica, last_seen_at FROM miners WHERE id = ?").get(m.id) as { instance_id: string; replica: string | null; last_seen_at: number | null };
    return { opened: false, holder: { instanceId: h.instance_id, replica: h.replica, lastSeenAt: h.last_seen_at } };
  });
}

export function touchMiners(db: SqliteDb, replica: string, sessions: MinerTouch[], now: number): void {
  if (sessions.length === 0) return;
  db.tx(() => {
    const stmt = db.sql("UPDATE miners SET last_seen_at = ?, draining = ?, gpu_load = COALESCE(?, gpu_load) WHERE id = ? AND epoch = ? AND replica = ?");
    for (const s of sessions) stmt.run(now, s.draining ? 1 : 0, s.gpuLoad === undefined ? null : JSON.stringify(s.gpuLoad), s.id, s.epoch, replica);
  });
}

export function closeMinerSession(db: SqliteDb, id: string, epoch: number, now: number): void {
  db.tx(() => db.sql("UPDATE miners SET connected = 0, last_seen_at = ? WHERE id = ? AND epoch = ?").run(now, id, epoch));
}

export function listConnectedMiners(db: SqliteDb, seenSince: number): MinerRecord[] {
  return db.read(() => (db.sql("SELECT * FROM miners WHERE connected = 1 AND last_seen_at >= ? ORDER BY id").all(seenSince) as MinerRow[]).map(toMiner));
}
