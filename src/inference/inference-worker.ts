import { parentPort } from "node:worker_threads";
import { ModelError, toAppError } from "../common/errors.js";
import { BatchDecoder } from "./batch-decoder.js";
import { createSession } from "./session-factory.js";
import type { FromWorker, GenerateMessage, LoadMessage, LoadedModelSummary, ToWorker, WireError } from "./worker-protocol.js";

/**
 * The inference worker thread: owns one device's sessions, so session.run never blocks the
 * main thread. Each model has a BatchDecoder; while any has sequences, the pump runs one step
 * of each in turn, so concurrent generations of a model share decode steps and those of
 * different models interleave. session.run yields to the event loop (setImmediate) before it
 * runs, which is when new generate messages join. See worker-protocol.ts for the messages.
 */
const port = parentPort;
if (port === null) throw new Error("inference-worker must run in a worker thread");

const models = new Map<string, BatchDecoder>();
let queue: Promise<void> = Promise.resolve();
let pumping: Promise<void> | undefined;

function send(message: FromWorker): void {
  port?.postMessage(message);
}

function wire(err: unknown): WireError {
  const e = toAppError(err);
  return { code: e.code, message: e.message, retryable: e.retryable, ...(e.details === undefined ? {} : { details: e.details }) };
}

async function load(msg: LoadMessage): Promise<void> {
  const summaries: LoadedModelSummary[] = [];
  try {
    for (const spec of msg.models) {
      const created = await createSession(spec.onnxPath, msg.device, msg.settings);
      models.set(spec.name, new BatchDecoder({ ...spec, session: created.session }, msg.maxBatch));
      summaries.push({ name: spec.name, device: created.device, ...(created.fallbackReason === undefined ? {} : { fallbackReason: created.fallbackReason }) });
    }
  } catch (err) {
    await release();
    send({ type: "load_failed", error: wire(err) });
    return;
  }
  send({ type: "loaded", models: summaries });
}

function generate(msg: GenerateMessage): void {
  const decoder = models.get(msg.model);
  if (decoder === undefined) {
    send({ type: "failed", id: msg.id, error: wire(new ModelError("model_not_loaded", "the model is not loaded by this engine", { model: msg.model })) });
    return;
  }
  const flag = new Int32Array(msg.cancelFlag);
  decoder
    .add(
      { promptIds: msg.promptIds, maxTokens: msg.maxTokens, seed: msg.seed, ...msg.sampling },
      {
        cancelled: () => Atomics.load(flag, 0) !== 0,
        onToken: (tokenId, count) => send({ type: "token", id: msg.id, tokenId, count }),
      },
    )
    .then(
      (result) => send({ type: "done", id: msg.id, result }),
      (err: unknown) => send({ type: "failed", id: msg.id, error: wire(err) }),
    );
  pumping ??= pump().finally(() => (pumping = undefined));
}

/** Steps every decoder that has sequences, round-robin, until none has. */
async function pump(): Promise<void> {
  for (;;) {
    const busy = [...models.values()].filter((d) => d.size > 0);
    if (busy.length === 0) return;
    for (const decoder of busy) await decoder.step();
  }
}

async function release(): Promise<void> {
  await pumping;
  for (const decoder of models.values()) await decoder.model.session.release();
  models.clear();
}

port.on("message", (msg: ToWorker) => {
  switch (msg.type) {
    case "load":
      queue = queue.then(() => load(msg));
      break;
    case "generate":
      // After the load it follows (the engine sends none before "loaded").
      void queue.then(() => generate(msg));
      break;
    case "close":
      queue = queue.then(async () => {
        await release();
        send({ type: "closed" });
        port.close();
      });
      break;
  }
});
