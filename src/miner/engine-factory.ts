import type { Logger } from "../common/logger.js";
import { AppError, errorMessage } from "../common/errors.js";
import { compileInferenceConfig, type InferenceConfig } from "../inference/config.js";
import type { Engine } from "../inference/engine.js";
import type { MinerConfig } from "./config.js";
import { FakeEngine } from "./fake-engine.js";

/**
 * Builds the miner's engine: the fake one when `[fake_engine] enabled` (fault-injection tests),
 * otherwise OnnxEngine from src/inference/onnx-engine.ts on the selected GPUs (CPU when none).
 *
 * INTEGRATION POINT: OnnxEngine is written in parallel. It is loaded by a computed import so this
 * file compiles before it exists; the expected shape is
 * `export class OnnxEngine implements Engine { constructor(config: InferenceConfig, options: { log: Logger }) }`.
 * If its constructor differs, adapt the one `new` line below.
 */
type OnnxEngineCtor = new (config: InferenceConfig, options: { log: Logger }) => Engine;

const ONNX_ENGINE_MODULE = "../inference/onnx-engine.js";

export async function createEngine(config: MinerConfig, deviceIds: number[], log: Logger): Promise<Engine> {
  if (config.fakeEngine !== undefined) {
    log.warn({ models: config.fakeEngine.models }, "using the fake engine (tests only)");
    return new FakeEngine(config.fakeEngine);
  }
  let mod: { OnnxEngine?: OnnxEngineCtor };
  try {
    mod = (await import(ONNX_ENGINE_MODULE)) as { OnnxEngine?: OnnxEngineCtor };
  } catch (err) {
    throw new AppError("engine_unavailable", `the ONNX engine could not be loaded: ${errorMessage(err)}`);
  }
  if (typeof mod.OnnxEngine !== "function") {
    throw new AppError("engine_unavailable", "src/inference/onnx-engine.ts does not export OnnxEngine");
  }
  return new mod.OnnxEngine(compileInferenceConfig(config.inference, deviceIds), { log: log.child({ component: "engine" }) });
}
