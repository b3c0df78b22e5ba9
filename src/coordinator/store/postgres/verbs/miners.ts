import { toMiner, type MinerRow } from "../../job-row.js";
import type { MinerRecord, MinerSessionOpened, MinerSessionOpening, MinerTouch } from "../../job-store.js";
import type { PgDb } from "../pg-db.js";

/** The control channel between replicas: small JSON hints (miner sessions, progress), never prompts or outputs. */
export const CONTROL_CHANNEL = "aitbc_control";

/**
 * The fleet across replicas. A hello writes the miner's row with its replica and a bumped epoch,
 * and says so on the control channel in the same transaction: the replica that held the older
 * session closes it (a miner reconnecting elsewhere fences its old session out).
 */
export function openMinerSession(db: PgDb, m: MinerSessionOpening, now: number, liveSince: number): Promise<MinerSessionOpened> {
  return db.tx(async (c): Promise<MinerSessionOpened> => {
    // ON CONFLICT locks the row: two hellos of one miner on two replicas are decided one after the other.
    const r = await c.query<{ epoch: number }>(
      `INSERT INTO miners (id, key_id, name, replica, epoch, connected, connected_at, last_seen_at, gpus, models, slots, free_slots, draining, instance_id)
       VALUES ($1, $2, $3, $4, 1, true, $5, $5, $6, $7, $8, $8, false, $9::text)
       ON CONFLICT (id) DO UPDATE SET replica = $4, epoch = miners.epoch + 1, connected = true, connected_at = $5, last_seen_at = $5,
         gpus = $6, models = $7, slots = $8, free_slots = $8, draining = false, instance_id = $9::text, gpu_load = NULL
       WHERE NOT (miners.connected AND miners.last_seen_at >= $10
                  AND miners.instance_id IS NOT NULL AND $9::text IS NOT NULL AND miners.instance_id <> $9::text)
       RETURNING epoch`,
      [m.id, m.keyId, m.name, m.replica, now, JSON.stringify(m.gpus), JSON.stringify(m.models), m.slots, m.instanceId, liveSince],
    );
    const row = r.rows[0];
    if (row === undefined) {
      const h = (await c.query<{ instance_id: string; replica: string | null; last_seen_at: number | null }>("SELECT instance_id, replica, last_seen_at FROM miners WHERE id = $1", [m.id])).rows[0]!;
      return { opened: false, holder: { instanceId: h.instance_id, replica: h.replica, lastSeenAt: h.last_seen_at } };
    }
    const epoch = row.epoch;
    await c.query("SELECT pg_notify($1, $2)", [CONTROL_CHANNEL, JSON.stringify({ k: "miner", id: m.id, e: epoch, r: m.replica })]);
    return { opened: true, epoch };
  });
}

export async function touchMiners(db: PgDb, replica: string, sessions: MinerTouch[], now: number): Promise<void> {
  if (sessions.length === 0) return;
  await db.query(
    `UPDATE miners AS m SET last_seen_at = $1, draining = s.draining, gpu_load = COALESCE(s.gpu_load::jsonb, m.gpu_load)
     FROM unnest($2::text[], $3::bigint[], $4::boolean[], $6::text[]) AS s(id, epoch, draining, gpu_load)
     WHERE m.id = s.id AND m.epoch = s.epoch AND m.replica = $5`,
    [
      now,
      sessions.map((s) => s.id),
      sessions.map((s) => s.epoch),
      sessions.map((s) => s.draining),
      replica,
      sessions.map((s) => (s.gpuLoad === undefined ? null : JSON.stringify(s.gpuLoad))),
    ],
  );
}

export async function closeMinerSession(db: PgDb, id: string, epoch: number, now: number): Promise<void> {
  await db.query("UPDATE miners SET connected = false, last_seen_at = $1 WHERE id = $2 AND epoch = $3", [now, id, epoch]);
}

export async function listConnectedMiners(db: PgDb, seenSince: number): Promise<MinerRecord[]> {
  return (await db.query<MinerRow>("SELECT * FROM miners WHERE connected AND last_seen_at >= $1 ORDER BY id", [seenSince])).map(toMiner);
}
