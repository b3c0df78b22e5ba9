/**
 * The framework ceiling for `npm run bench:api`: a bare fastify server (no auth, no store, no
 * logging) answering constant JSON on GET and POST. Run as its own child process, like the
 * coordinator, so both are measured the same way. Prints `{"port": N}` once listening.
 */
import Fastify from "fastify";

const app = Fastify({ logger: false });
const status = { job_id: "job_peer", status: "queued", progress: 0, miner_id: null, created_at: "2026-01-01T00:00:00.000Z" };
app.get("/peer/:id", async () => status);
app.post("/peer", async (_request, reply) => reply.code(201).send({ job_id: "job_peer", estimated_cost: 0.001, estimated_time_seconds: 3 }));

const address = await app.listen({ host: "127.0.0.1", port: 0 });
process.stdout.write(`${JSON.stringify({ port: Number(new URL(address).port) })}\n`);
process.on("SIGTERM", () => void app.close().then(() => process.exit(0)));
