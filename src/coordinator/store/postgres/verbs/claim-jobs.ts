import { minerCanRun } from "../../../scheduler/matching.js";
import { newLeaseToken } from "../../ids.js";
import { toJob, type JobRow } from "../../job-row.js";
import type { Assignment, MinerCapabilities } from "../../job-store.js";
import type pg from "pg";
import type { PgDb } from "../pg-db.js";

/** Rows locked per look: small, so replicas claiming at once skip past each other's few. */
const CLAIM_BATCH = 32;

/**
 * Leases the best queued job this miner can run. One transaction on the replica that holds the
 * miner's session: the queued jobs of its models, best first, locked with SKIP LOCKED (another
 * replica's claim never waits on these nor takes them: never one job to two miners), cheap
 * filters in SQL, GPU requirements checked in JS, then the UPDATE; rows not taken are unlocked
 * at commit. Keyset-paged on (priority_rank, seq) when none of a batch fits.
 *
 * A miner of one model gets `model = $2`, not `model = ANY($2)`: PostgreSQL (15, 16) walks the
 * partial index jobs_queued in (priority_rank DESC, seq) order only under an equality on model;
 * under `= ANY(array)` it reads and sorts every queued row of the models instead (a seq scan and
 * an on-disk sort with 10,000 queued: ~50 ms a claim against ~0.2 ms; `npm run bench:cluster`).
 */
export function claimNextJob(db: PgDb, miner: MinerCapabilities, now: number, leaseTtlMs: number): Promise<Assignment | null> {
  if (miner.models.length === 0) return Promise.resolve(null);
  const oneModel = miner.models.length === 1;
  const models = oneModel ? miner.models[0] : miner.models;
  return db.tx(async (c, emit) => {
    let rank = 3;
    let seq = 0;
    for (let look = 0; ; look++) {
      const rows = look === 0 ? await firstLook(c, now, miner.models) : (
        await c.query<JobRow>(
          `SELECT * FROM jobs WHERE status = 'queued' AND not_before <= $1 AND ${oneModel ? "model = $2::text" : "model = ANY($2::text[])"}
             AND (priority_rank < $3 OR (priority_rank = $3 AND seq > $4))
           ORDER BY priority_rank DESC, seq LIMIT ${CLAIM_BATCH} FOR UPDATE SKIP LOCKED`,
          [now, models, rank, seq],
        )
      ).rows;
      if (rows.length === 0) return null;
      for (const r of rows) {
        if (!minerCanRun(toJob(r), miner)) continue;
        const attempt = r.attempt + 1;
        const leaseToken = newLeaseToken();
        const leaseExpiresAt = now + leaseTtlMs;
        const updated = (
          await c.query<JobRow>(
            `UPDATE jobs SET status = 'assigned', attempt = $1, lease_token = $2, lease_expires_at = $3, miner_id = $4,
               assigned_at = $5, progress = 0 WHERE id = $6 AND status = 'queued' RETURNING *`,
            [attempt, leaseToken, leaseExpiresAt, miner.minerId, now, r.id],
          )
        ).rows[0]!;
        await emit({ jobId: r.id, type: "assigned", at: now, data: { attempt, miner_id: miner.minerId } });
        return { job: toJob(updated), attempt, leaseToken, leaseExpiresAt };
      }
      const last = rows[rows.length - 1]!;
      rank = last.priority_rank;
      seq = last.seq;
    }
  }, { beginsItself: true });
}

/**
 * BEGIN and the first look in one simple query (values as escaped literals: the simple protocol
 * takes no parameters). Every replica claims on every new job's hint and all but one find
 * nothing, so a claim that finds nothing costs two round trips (this and COMMIT), not three.
 */
async function firstLook(c: pg.PoolClient, now: number, models: readonly string[]): Promise<JobRow[]> {
  const escape = (v: string): string => c.escapeLiteral(v);
  const modelTest = models.length === 1 ? `model = ${escape(models[0]!)}::text` : `model = ANY(ARRAY[${models.map(escape).join(", ")}]::text[])`;
  const results = (await c.query(
    `BEGIN; SELECT * FROM jobs WHERE status = 'queued' AND not_before <= ${Math.trunc(now)} AND ${modelTest}
       ORDER BY priority_rank DESC, seq LIMIT ${CLAIM_BATCH} FOR UPDATE SKIP LOCKED`,
  )) as unknown as pg.QueryResult<JobRow>[];
  return results[1]!.rows;
}
