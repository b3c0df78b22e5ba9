import { randomBytes } from "node:crypto";
import pg from "pg";

/**
 * The PostgreSQL the tests use: AITBC_TEST_PG_URL, by default the local server's `test`
 * database. Tests never skip without it: an unreachable server fails the setup, saying how to
 * start one. Each store under test gets a schema of its own, dropped afterwards, so test files
 * can run side by side on one database.
 */
export const PG_URL = process.env.AITBC_TEST_PG_URL ?? "postgres://postgres@127.0.0.1:5432/test";

export async function requirePostgres(): Promise<void> {
  const c = new pg.Client({ connectionString: PG_URL, connectionTimeoutMillis: 5_000 });
  try {
    await c.connect();
    await c.query("SELECT 1");
  } catch (err) {
    throw new Error(
      `PostgreSQL is not reachable at ${PG_URL} (${err instanceof Error ? err.message : String(err)}). ` +
        "These tests need it and do not skip. Start it: locally `pg_ctlcluster $(ls /etc/postgresql) main start` " +
        "(or point AITBC_TEST_PG_URL at one); in CI, .ci/run starts it and creates the test database.",
    );
  } finally {
    await c.end().catch(() => undefined);
  }
}

/** A new, empty schema on the test database; `drop()` removes it and everything in it. */
export async function freshSchema(prefix = "t"): Promise<{ schema: string; drop: () => Promise<void> }> {
  const schema = `${prefix}_${randomBytes(6).toString("hex")}`;
  const c = new pg.Client({ connectionString: PG_URL });
  await c.connect();
  await c.query(`CREATE SCHEMA ${schema}`);
  await c.end();
  return {
    schema,
    drop: async () => {
      const d = new pg.Client({ connectionString: PG_URL });
      await d.connect();
      await d.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
      await d.end();
    },
  };
}
