import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { JobEvents } from "../../src/coordinator/store/job-events.js";
import { PgDb } from "../../src/coordinator/store/postgres/pg-db.js";
import { PG_URL, freshSchema, requirePostgres } from "./pg-harness.js";

describe("PostgreSQL statements", () => {
  let db: PgDb;
  let drop: () => Promise<void>;
  beforeAll(async () => {
    await requirePostgres();
    const schema = await freshSchema("prep");
    drop = schema.drop;
    // One connection, so that pg_prepared_statements (per session) shows what the pool's client prepared.
    db = new PgDb({ url: PG_URL, schema: schema.schema, max: 1 }, new JobEvents());
  });
  afterAll(async () => {
    await db.close();
    await drop();
  });

  const prepared = async (): Promise<string[]> =>
    (await db.query<{ name: string; statement: string }>("SELECT name, statement FROM pg_prepared_statements ORDER BY name")).filter((r) => r.name.startsWith("aitbc_")).map((r) => r.statement);

  it("a parameterized statement is prepared once per connection, through pool.query and through a transaction's client", async () => {
    for (let i = 0; i < 3; i++) expect(await db.query<{ n: number }>("SELECT $1::int + 1 AS n", [i])).toEqual([{ n: i + 1 }]);
    const inTx = await db.tx(async (c) => (await c.query<{ m: string }>("SELECT $1::text || 'b' AS m", ["a"])).rows);
    expect(inTx).toEqual([{ m: "ab" }]);
    const statements = await prepared();
    expect(statements.filter((s) => s === "SELECT $1::int + 1 AS n")).toHaveLength(1);
    expect(statements).toContain("SELECT $1::text || 'b' AS m");
  });

  it("past a few hundred texts, more run unnamed instead of growing the connection's prepared statements", async () => {
    for (let i = 0; i < 600; i++) expect(await db.query<{ n: number }>(`SELECT $1::int + ${i} AS n`, [1])).toEqual([{ n: i + 1 }]);
    const count = (await prepared()).length;
    expect(count).toBeGreaterThan(400);
    expect(count).toBeLessThanOrEqual(500);
  });

  it("statements without parameters still run as given, several commands in one string included", async () => {
    const before = (await prepared()).length;
    const r = await db.tx(async (c) => {
      await c.query("SELECT 1; SELECT 2");
      return (await c.query<{ three: number }>("SELECT 3 AS three")).rows;
    });
    expect(r).toEqual([{ three: 3 }]);
    expect(await prepared()).toHaveLength(before);
  });
});
