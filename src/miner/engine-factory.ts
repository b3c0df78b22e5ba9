import type { Logger } from "../common/logger.js";
import { compileInferenceConfig } from "../inference/config.js";
import type { Engine } from "../inference/engine.js";
import { OnnxEngine } from "../inference/onnx-engine.js";
import type { MinerConfig } from "./config.js";
import { FakeEngine } from "./fake-engine.js";

/**
 * Builds the miner's engine: the fake one when `[fake_engine] enabled` (fault-injection tests),
 * otherwise OnnxEngine on the selected GPUs (CPU when there are none).
 */
export function createEngine(config: MinerConfig, deviceIds: number[], log: Logger): Engine {
  if (config.fakeEngine !== undefined) {
    log.warn({ models: config.fakeEngine.models }, "using the fake engine (tests only)");
    return new FakeEngine(config.fakeEngine);
  }
  return new OnnxEngine(compileInferenceConfig(config.inference, deviceIds), { log: log.child({ component: "engine" }) });
}
