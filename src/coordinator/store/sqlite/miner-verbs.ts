import type { GpuInfo } from "../../../protocol/frames.js";
import { toMiner, type MinerRow } from "../job-row.js";
import type { MinerRecord } from "../job-store.js";
import type { SqliteDb } from "./sqlite-db.js";

/** The miners table on SQLite: one replica's fleet, written at hello, refreshed each heartbeat. */

export function openMinerSession(
  db: SqliteDb,
  m: { id: string; keyId: string; name: string; replica: string; gpus: GpuInfo[]; models: string[]; slots: number },
  now: number,
): number {
  return db.tx(() => {
    const r = db
      .sql(
        `INSERT INTO miners (id, key_id, name, replica, epoch, connected, connected_at, last_seen_at, gpus, models, slots, free_slots, draining)
         VALUES (@id, @keyId, @name, @replica, 1, 1, @now, @now, @gpus, @models, @slots, @slots, 0)
         ON CONFLICT (id) DO UPDATE SET replica = @replica, epoch = epoch + 1, connected = 1, connected_at = @now, last_seen_at = @now,
           gpus = @gpus, models = @models, slots = @slots, free_slots = @slots, draining = 0
         RETURNING epoch`,
      )
      .get({ ...m, now, gpus: JSON.stringify(m.gpus), models: JSON.stringify(m.models) }) as { epoch: number };
    return r.epoch;
  });
}

export function touchMiners(db: SqliteDb, replica: string, sessions: { id: string; epoch: number; draining: boolean }[], now: number): void {
  if (sessions.length === 0) return;
  db.tx(() => {
    const stmt = db.sql("UPDATE miners SET last_seen_at = ?, draining = ? WHERE id = ? AND epoch = ? AND replica = ?");
    for (const s of sessions) stmt.run(now, s.draining ? 1 : 0, s.id, s.epoch, replica);
  });
}

export function closeMinerSession(db: SqliteDb, id: string, epoch: number, now: number): void {
  db.tx(() => db.sql("UPDATE miners SET connected = 0, last_seen_at = ? WHERE id = ? AND epoch = ?").run(now, id, epoch));
}

export function listConnectedMiners(db: SqliteDb, seenSince: number): MinerRecord[] {
  return db.read(() => (db.sql("SELECT * FROM miners WHERE connected = 1 AND last_seen_at >= ? ORDER BY id").all(seenSince) as MinerRow[]).map(toMiner));
}
