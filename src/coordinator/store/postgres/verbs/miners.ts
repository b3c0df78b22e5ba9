import type { GpuInfo } from "../../../../protocol/frames.js";
import { toMiner, type MinerRow } from "../../job-row.js";
import type { MinerRecord } from "../../job-store.js";
import type { PgDb } from "../pg-db.js";

/** The control channel between replicas: small JSON hints (miner sessions, progress), never prompts or outputs. */
export const CONTROL_CHANNEL = "aitbc_control";

/**
 * The fleet across replicas. A hello writes the miner's row with its replica and a bumped epoch,
 * and says so on the control channel in the same transaction: the replica that held the older
 * session closes it (a miner reconnecting elsewhere fences its old session out).
 */
export function openMinerSession(
  db: PgDb,
  m: { id: string; keyId: string; name: string; replica: string; gpus: GpuInfo[]; models: string[]; slots: number },
  now: number,
): Promise<number> {
  return db.tx(async (c) => {
    const r = await c.query<{ epoch: number }>(
      `INSERT INTO miners (id, key_id, name, replica, epoch, connected, connected_at, last_seen_at, gpus, models, slots, free_slots, draining)
       VALUES ($1, $2, $3, $4, 1, true, $5, $5, $6, $7, $8, $8, false)
       ON CONFLICT (id) DO UPDATE SET replica = $4, epoch = miners.epoch + 1, connected = true, connected_at = $5, last_seen_at = $5,
         gpus = $6, models = $7, slots = $8, free_slots = $8, draining = false
       RETURNING epoch`,
      [m.id, m.keyId, m.name, m.replica, now, JSON.stringify(m.gpus), JSON.stringify(m.models), m.slots],
    );
    const epoch = r.rows[0]!.epoch;
    await c.query("SELECT pg_notify($1, $2)", [CONTROL_CHANNEL, JSON.stringify({ k: "miner", id: m.id, e: epoch, r: m.replica })]);
    return epoch;
  });
}

export async function touchMiners(db: PgDb, replica: string, sessions: { id: string; epoch: number; draining: boolean }[], now: number): Promise<void> {
  if (sessions.length === 0) return;
  await db.query(
    `UPDATE miners AS m SET last_seen_at = $1, draining = s.draining
     FROM unnest($2::text[], $3::bigint[], $4::boolean[]) AS s(id, epoch, draining)
     WHERE m.id = s.id AND m.epoch = s.epoch AND m.replica = $5`,
    [now, sessions.map((s) => s.id), sessions.map((s) => s.epoch), sessions.map((s) => s.draining), replica],
  );
}

export async function closeMinerSession(db: PgDb, id: string, epoch: number, now: number): Promise<void> {
  await db.query("UPDATE miners SET connected = false, last_seen_at = $1 WHERE id = $2 AND epoch = $3", [now, id, epoch]);
}

export async function listConnectedMiners(db: PgDb, seenSince: number): Promise<MinerRecord[]> {
  return (await db.query<MinerRow>("SELECT * FROM miners WHERE connected AND last_seen_at >= $1 ORDER BY id", [seenSince])).map(toMiner);
}
