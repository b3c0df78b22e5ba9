/**
 * The BullMQ side of `npm run bench:cluster`, as child processes of the bench:
 *
 *   front  <redis port> <queue> <http port>          a REST front: POST /v1/jobs → queue.add (201
 *                                                    {job_id}); GET /v1/jobs/:id/wait answers once
 *                                                    the job has finished (job.waitUntilFinished on
 *                                                    QueueEvents), with its state and output
 *   worker <redis port> <queue> <concurrency> <tps>  a BullMQ Worker whose processor runs the same
 *                                                    FakeEngine the miners run, at the same speed
 *
 * Both talk to the Redis on 127.0.0.1:<redis port>. They run until SIGTERM, then close their
 * connections. Nothing of the jobs' inputs or outputs is logged.
 */
import Fastify from "fastify";
import { Queue, QueueEvents, Worker, type ConnectionOptions } from "bullmq";
import { FakeEngine } from "../src/miner/fake-engine.js";
import { resolveGenerationParameters, type GenerationParameters } from "../src/protocol/generation.js";

interface SubmitBody {
  model: string;
  input: string;
  parameters?: GenerationParameters;
}

const [role, redisPort, queueName, arg3, arg4] = process.argv.slice(2);
if (redisPort === undefined || queueName === undefined || arg3 === undefined) throw new Error("usage: cluster-bullmq.ts front|worker <redis port> <queue> …");
const connection: ConnectionOptions = { host: "127.0.0.1", port: Number(redisPort), maxRetriesPerRequest: null };

async function front(port: number): Promise<() => Promise<void>> {
  const queue = new Queue<SubmitBody>(queueName!, { connection });
  const events = new QueueEvents(queueName!, { connection });
  await Promise.all([queue.waitUntilReady(), events.waitUntilReady()]);
  // Each waiting request holds a "closing" listener on the queue until its job finishes: as many
  // as the driver keeps outstanding, not a leak (Node warns past 10).
  queue.setMaxListeners(0);
  const app = Fastify({ logger: false });
  app.post<{ Body: SubmitBody }>("/v1/jobs", async (request, reply) => {
    const b = request.body;
    if (typeof b?.model !== "string" || typeof b.input !== "string") return reply.code(400).send({ error: "model and input are required" });
    const job = await queue.add("generate", { model: b.model, input: b.input, ...(b.parameters === undefined ? {} : { parameters: b.parameters }) });
    return reply.code(201).send({ job_id: job.id });
  });
  app.get<{ Params: { id: string } }>("/v1/jobs/:id/wait", async (request, reply) => {
    const job = await queue.getJob(request.params.id);
    if (job === undefined) return reply.code(404).send({ error: "no such job" });
    try {
      const output: unknown = await job.waitUntilFinished(events, 60_000);
      return { job_id: job.id, status: "completed", result: output };
    } catch (err) {
      return { job_id: job.id, status: "failed", error: err instanceof Error ? err.message : String(err) };
    }
  });
  app.get("/healthz", async () => ({ status: "ok" }));
  await app.listen({ host: "127.0.0.1", port });
  return async () => {
    await app.close();
    await events.close();
    await queue.close();
  };
}

async function worker(concurrency: number, tokensPerSecond: number): Promise<() => Promise<void>> {
  const engine = new FakeEngine({ tokensPerSecond, models: ["tiny-gpt2"], failAfterTokens: 0, crashAfterTokens: 0, hangAfterTokens: 0, exitAfterTokens: 0 });
  await engine.initialize();
  const w = new Worker<SubmitBody>(
    queueName!,
    async (job) => {
      const r = await engine.generate({ model: job.data.model, prompt: job.data.input, params: resolveGenerationParameters(job.data.parameters, () => 7) });
      return { output: r.text, finish_reason: r.finish_reason, usage: r.usage, timing: r.timing };
    },
    { connection, concurrency },
  );
  await w.waitUntilReady();
  return async () => {
    await w.close();
    await engine.close();
  };
}

const close = role === "front" ? await front(Number(arg3)) : role === "worker" ? await worker(Number(arg3), Number(arg4 ?? 1000)) : undefined;
if (close === undefined) throw new Error(`unknown role ${role}`);
process.stdout.write("ready\n");
process.once("SIGTERM", () => {
  close().then(
    () => process.exit(0),
    () => process.exit(1),
  );
});
