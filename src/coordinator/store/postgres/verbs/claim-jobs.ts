import { minerCanRun } from "../../../scheduler/matching.js";
import { newLeaseToken } from "../../ids.js";
import { toJob, type JobRow } from "../../job-row.js";
import type { Assignment, MinerCapabilities } from "../../job-store.js";
import type pg from "pg";
import { ATTEMPT_DATA } from "../job-writes.js";
import { loggedEvent, loggedEventCtes, type PgDb } from "../pg-db.js";

/** Rows locked per look after the first (when the first look's rows did not all fit the miner). */
const CLAIM_BATCH = 32;

/**
 * The jobs taken, leased, with their events (counter, log row, NOTIFY) in the same statement: a
 * separate event statement was one round trip more on every claim that took something.
 */
/** What a lease sets on a queued job `j` (SQL for the token; `$n` for the rest), its event counter bumped for the `assigned` event. */
function leaseSet(token: string, expiresAt: string, minerId: string, now: string): string {
  return `status = 'assigned', attempt = j.attempt + 1, lease_token = ${token}, lease_expires_at = ${expiresAt}, miner_id = ${minerId},
    assigned_at = ${now}, progress = 0, event_seq = j.event_seq + 1`;
}

const ASSIGN = `WITH upd AS (
  UPDATE jobs j SET ${leaseSet("u.token", "$3", "$4", "$5")}
  FROM unnest($1::text[], $2::text[]) AS u(id, token) WHERE j.id = u.id AND j.status = 'queued' RETURNING j.*),
${loggedEvent({ type: "assigned", data: ATTEMPT_DATA, at: "$5", channel: "$6", replica: "$7" })}`;

/**
 * Leases up to `max` of the best queued jobs this miner can run, on the replica that holds the
 * miner's session. First as one statement (claimPlain), which answers whenever none of the best
 * `max` has a GPU requirement; otherwise one transaction: the queued jobs of its models, best
 * first, locked with SKIP LOCKED (another claim never waits on these nor takes them: never one
 * job to two miners), cheap filters in SQL, GPU requirements checked in JS, then one statement
 * for all the jobs taken that also logs and notifies their `assigned` events (ASSIGN); rows not
 * taken are unlocked at commit.
 *
 * The first look locks only `max` rows: a claim holds every row it looked at until it commits,
 * and with a batch of 32 a second claim at the same moment found the first's 32 locked and
 * nothing else to take (`npm run bench:cluster`: with 32 jobs outstanding every dispatch round
 * ended on such an empty claim). Later looks, after rows that did not fit, are keyset-paged on
 * (priority_rank, seq) in batches of 32.
 *
 * A miner of one model gets `model = $2`, not `model = ANY($2)`: PostgreSQL (15, 16) walks the
 * partial index jobs_queued in (priority_rank DESC, seq) order only under an equality on model;
 * under `= ANY(array)` it reads and sorts every queued row of the models instead (a seq scan and
 * an on-disk sort with 10,000 queued: ~50 ms a claim against ~0.2 ms; `npm run bench:cluster`).
 */
export async function claimJobs(db: PgDb, miner: MinerCapabilities, now: number, leaseTtlMs: number, max: number): Promise<Assignment[]> {
  if (miner.models.length === 0 || max < 1) return [];
  const quick = await claimPlain(db, miner, now, leaseTtlMs, max);
  if (quick !== undefined) return quick;
  const oneModel = miner.models.length === 1;
  const models = oneModel ? miner.models[0] : miner.models;
  return db.tx(async (c, emit) => {
    let rank = 3;
    let seq = 0;
    const picked: JobRow[] = [];
    for (let look = 0; picked.length < max; look++) {
      const limit = look === 0 ? max : CLAIM_BATCH;
      const rows = look === 0 ? await firstLook(c, now, miner.models, limit) : (
        await c.query<JobRow>(
          `SELECT * FROM jobs WHERE status = 'queued' AND not_before <= $1 AND ${oneModel ? "model = $2::text" : "model = ANY($2::text[])"}
             AND (priority_rank < $3 OR (priority_rank = $3 AND seq > $4))
           ORDER BY priority_rank DESC, seq LIMIT ${limit} FOR UPDATE SKIP LOCKED`,
          [now, models, rank, seq],
        )
      ).rows;
      if (rows.length === 0) break;
      for (const r of rows) {
        if (picked.length < max && minerCanRun(toJob(r), miner)) picked.push(r);
      }
      // Fewer than asked for: nothing more is queued (or unlocked) past them.
      if (rows.length < limit) break;
      const last = rows[rows.length - 1]!;
      rank = last.priority_rank;
      seq = last.seq;
    }
    if (picked.length === 0) return [];
    const leaseExpiresAt = now + leaseTtlMs;
    const tokens = new Map(picked.map((r) => [r.id, newLeaseToken()]));
    const updated = (
      await c.query<JobRow & { event_seq: number }>(ASSIGN, [[...tokens.keys()], [...tokens.values()], leaseExpiresAt, miner.minerId, now, ...db.eventParams()])
    ).rows;
    // Best first, as they were picked (RETURNING has no order).
    const byId = new Map(updated.map((r) => [r.id, r]));
    const taken = picked.flatMap((r) => {
      const u = byId.get(r.id);
      return u === undefined ? [] : [{ job: toJob(u), attempt: u.attempt, leaseToken: tokens.get(r.id)!, leaseExpiresAt }];
    });
    emit.logged(taken.map((a) => ({ jobId: a.job.id, seq: byId.get(a.job.id)!.event_seq, type: "assigned", at: now, data: { attempt: a.attempt, miner_id: miner.minerId } })));
    return taken;
  }, { beginsItself: true });
}

/** A requirement only JS can check (minerCanRun: loose GPU names, VRAM, counts): a job with none runs on any miner of its model. */
const GPU_KEYS = "ARRAY['gpu_type', 'gpu_count', 'min_vram_gb']";

/**
 * The claim in one autocommit statement when the best `max` queued jobs of the miner's models
 * (SKIP LOCKED, as the first look) have no GPU requirements, which is when the transaction below
 * would take them all: they are leased, logged and notified at once (one round trip, where BEGIN
 * with the first look, the lease with the events, and COMMIT were three; an empty claim, which
 * every replica but one makes on each new job's hint, was two). Undefined when one of them has
 * a GPU requirement (nothing was written; the transaction decides), else the jobs, best first.
 */
async function claimPlain(db: PgDb, miner: MinerCapabilities, now: number, leaseTtlMs: number, max: number): Promise<Assignment[] | undefined> {
  const oneModel = miner.models.length === 1;
  const leaseExpiresAt = now + leaseTtlMs;
  const tokens = Array.from({ length: max }, () => newLeaseToken());
  // One row at least (the LEFT JOIN): whether the jobs looked at were plain, and each job taken.
  const rows = await db.writeWithEvents<{ plain: boolean } & ({ id: null } | (JobRow & { event_seq: number; n: number }))>(
    `WITH picked AS (
       SELECT id, requirements ?| ${GPU_KEYS} AS gpu, row_number() OVER (ORDER BY priority_rank DESC, seq) AS n FROM (
         SELECT id, requirements, priority_rank, seq FROM jobs WHERE status = 'queued' AND not_before <= $1 AND ${oneModel ? "model = $2::text" : "model = ANY($2::text[])"}
         ORDER BY priority_rank DESC, seq LIMIT $3 FOR UPDATE SKIP LOCKED) q),
     plain AS (SELECT NOT EXISTS (SELECT 1 FROM picked WHERE gpu) AS ok),
     upd AS (
       UPDATE jobs j SET ${leaseSet("t.token", "$5", "$6", "$1")}
       FROM picked p JOIN unnest($4::text[]) WITH ORDINALITY AS t(token, n) ON t.n = p.n
       WHERE j.id = p.id AND j.status = 'queued' AND (SELECT ok FROM plain) RETURNING j.*, p.n),
     ${loggedEventCtes({ type: "assigned", data: ATTEMPT_DATA, at: "$1", channel: "$7", replica: "$8" })}
     SELECT plain.ok AS plain, written.* FROM plain LEFT JOIN written ON true ORDER BY written.n`,
    [now, oneModel ? miner.models[0]! : miner.models, max, tokens, leaseExpiresAt, miner.minerId],
    (got) => got.flatMap((r) => (r.id === null ? [] : [{ jobId: r.id, seq: r.event_seq, type: "assigned", at: now, data: { attempt: r.attempt, miner_id: miner.minerId } }])),
  );
  if (rows[0]?.plain !== true) return undefined;
  return rows.flatMap((r) => (r.id === null ? [] : [{ job: toJob(r), attempt: r.attempt, leaseToken: tokens[r.n - 1]!, leaseExpiresAt }]));
}

/**
 * BEGIN and the first look in one simple query (values as escaped literals: the simple protocol
 * takes no parameters): the transaction runs only after claimPlain saw a GPU requirement among
 * the best jobs, and with this it costs three round trips (this, ASSIGN, COMMIT), not four.
 */
async function firstLook(c: pg.PoolClient, now: number, models: readonly string[], limit: number): Promise<JobRow[]> {
  const escape = (v: string): string => c.escapeLiteral(v);
  const modelTest = models.length === 1 ? `model = ${escape(models[0]!)}::text` : `model = ANY(ARRAY[${models.map(escape).join(", ")}]::text[])`;
  const results = (await c.query(
    `BEGIN; SELECT * FROM jobs WHERE status = 'queued' AND not_before <= ${Math.trunc(now)} AND ${modelTest}
       ORDER BY priority_rank DESC, seq LIMIT ${Math.trunc(limit)} FOR UPDATE SKIP LOCKED`,
  )) as unknown as pg.QueryResult<JobRow>[];
  return results[1]!.rows;
}
