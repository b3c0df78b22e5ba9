import { parentPort } from "node:worker_threads";
import { ModelError, toAppError } from "../common/errors.js";
import { runDecode, type DecodeModel } from "./decode-loop.js";
import { createSession } from "./session-factory.js";
import type { FromWorker, GenerateMessage, LoadMessage, LoadedModelSummary, ToWorker, WireError } from "./worker-protocol.js";

/**
 * The inference worker thread: owns one device's sessions and runs generations one at a time,
 * so session.run never blocks the main thread. See worker-protocol.ts for the messages.
 */
const port = parentPort;
if (port === null) throw new Error("inference-worker must run in a worker thread");

const models = new Map<string, DecodeModel>();
let queue: Promise<void> = Promise.resolve();

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
      models.set(spec.name, { ...spec, session: created.session });
      summaries.push({ name: spec.name, device: created.device, ...(created.fallbackReason === undefined ? {} : { fallbackReason: created.fallbackReason }) });
    }
  } catch (err) {
    await release();
    send({ type: "load_failed", error: wire(err) });
    return;
  }
  send({ type: "loaded", models: summaries });
}

async function generate(msg: GenerateMessage): Promise<void> {
  const flag = new Int32Array(msg.cancelFlag);
  try {
    const model = models.get(msg.model);
    if (model === undefined) throw new ModelError("model_not_loaded", "the model is not loaded by this engine", { model: msg.model });
    const result = await runDecode(
      model,
      { promptIds: msg.promptIds, maxTokens: msg.maxTokens, seed: msg.seed, ...msg.sampling },
      {
        cancelled: () => Atomics.load(flag, 0) !== 0,
        onToken: (tokenId, count) => send({ type: "token", id: msg.id, tokenId, count }),
      },
    );
    send({ type: "done", id: msg.id, result });
  } catch (err) {
    send({ type: "failed", id: msg.id, error: wire(err) });
  }
}

async function release(): Promise<void> {
  for (const model of models.values()) await model.session.release();
  models.clear();
}

port.on("message", (msg: ToWorker) => {
  switch (msg.type) {
    case "load":
      queue = queue.then(() => load(msg));
      break;
    case "generate":
      queue = queue.then(() => generate(msg));
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
