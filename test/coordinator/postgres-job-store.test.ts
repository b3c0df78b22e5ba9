import { beforeAll } from "vitest";
import { JobEvents } from "../../src/coordinator/store/job-events.js";
import type { JobStore } from "../../src/coordinator/store/job-store.js";
import { PostgresJobStore } from "../../src/coordinator/store/postgres/postgres-job-store.js";
import { jobStoreContract } from "./job-store-contract.js";
import { PG_URL, freshSchema, requirePostgres } from "./pg-harness.js";

beforeAll(() => requirePostgres());

jobStoreContract("PostgresJobStore (a schema of its own on the test database)", async () => {
  const { schema, drop } = await freshSchema();
  const events = new JobEvents();
  let current: JobStore = await PostgresJobStore.open({ url: PG_URL, schema, max: 4 }, events);
  return {
    store: current,
    events,
    reopen: async () => {
      current = await PostgresJobStore.open({ url: PG_URL, schema, max: 4 }, events);
      return current;
    },
    cleanup: async () => {
      await current.close();
      await drop();
    },
  };
});
