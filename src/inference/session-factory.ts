import { availableParallelism, loadavg } from "node:os";
import * as ort from "onnxruntime-node";
import { AppError, errorMessage } from "../common/errors.js";
import { checkCudaProvider, describeCudaProviderProblem } from "./cuda-provider.js";

// onnxruntime's default logger prints the CUDA provider's load failure in colour on stderr
// before any session option applies; the engine reports it once, in its own log, instead.
ort.env.logLevel = "fatal";

/** Where a session should run: a CUDA device or the CPU. */
export type DeviceRequest = { kind: "cuda"; deviceId: number } | { kind: "cpu" };

export interface SessionSettings {
  executionProvider: "auto" | "cuda" | "cpu";
  /** 0 = one per CPU the process may use (os.availableParallelism()). */
  intraOpThreads: number;
  /** 0 = onnxruntime's choice. */
  interOpThreads: number;
  graphOptimizationLevel: "disabled" | "basic" | "extended" | "all";
  /** intra_op.allow_spinning; "auto" (the default) decides with {@link resolveThreadSpinning}. */
  threadSpinning?: boolean | "auto";
}

export interface CreatedSession {
  session: ort.InferenceSession;
  /** "cuda:0", "cpu", … where it actually runs. */
  device: string;
  /** Why CUDA was asked for and the session runs on the CPU instead. */
  fallbackReason?: string;
}

/**
 * Creates an onnxruntime session on the requested device. onnxruntime-node throws at session
 * creation when the CUDA provider cannot load (there is no silent fallback in Node), so with
 * execution_provider "auto" the error is caught and the session is created on the CPU with
 * the reason attached; with "cuda" the error is raised as `cuda_unavailable`.
 */
export async function createSession(modelPath: string, device: DeviceRequest, settings: SessionSettings): Promise<CreatedSession> {
  const base = sessionOptions(settings);
  if (device.kind === "cpu") {
    return { session: await ort.InferenceSession.create(modelPath, { ...base, executionProviders: ["cpu"] }), device: "cpu" };
  }
  try {
    // onnxruntime's own log would print the provider error in colour on stderr; it is reported here instead.
    const session = await ort.InferenceSession.create(modelPath, { ...base, logSeverityLevel: 4, executionProviders: [{ name: "cuda", deviceId: device.deviceId }] });
    return { session, device: `cuda:${device.deviceId}` };
  } catch (err) {
    const missing = describeCudaProviderProblem(checkCudaProvider());
    const reason = missing === "" ? cudaFailureReason(errorMessage(err)) : missing;
    if (settings.executionProvider === "cuda") {
      throw new AppError("cuda_unavailable", "the CUDA execution provider cannot be loaded", { details: { device_id: device.deviceId, reason }, cause: err });
    }
    const session = await ort.InferenceSession.create(modelPath, { ...base, executionProviders: ["cpu"] });
    return { session, device: "cpu", fallbackReason: reason };
  }
}

function sessionOptions(settings: SessionSettings): ort.InferenceSession.SessionOptions {
  return {
    graphOptimizationLevel: settings.graphOptimizationLevel,
    executionMode: "sequential",
    // onnxruntime's own default is the physical core count, which on small VMs (2 vCPUs, 1 core)
    // leaves half the memory bandwidth unused: decoding is memory-bound, so use every CPU.
    intraOpNumThreads: settings.intraOpThreads > 0 ? settings.intraOpThreads : availableParallelism(),
    ...(settings.interOpThreads > 0 ? { interOpNumThreads: settings.interOpThreads } : {}),
    ...(!resolveThreadSpinning(settings.threadSpinning) ? { extra: { session: { "intra_op.allow_spinning": "0" } } } : {}),
  };
}

/**
 * Whether onnxruntime's intra-op threads should spin. "auto": only when the CPUs are mostly
 * idle (1-minute load average below the CPU count less one half), because spinning threads
 * fight other busy processes for the cores and decoding then slows down several times.
 */
export function resolveThreadSpinning(setting: boolean | "auto" | undefined, load = loadavg()[0] ?? 0, cpus = availableParallelism()): boolean {
  if (setting === true || setting === false) return setting;
  return load < cpus - 0.5;
}

/**
 * A one-line reason from onnxruntime's provider-loading error, which arrives with ANSI colour
 * codes and a C++ source location: names the library that failed and why when it can.
 */
export function cudaFailureReason(message: string): string {
  const plain = message.replace(/\u001b\[[0-9;]*m/g, "");
  const lib = /Failed to load library (\S+) with error: (.*?)(?:\n|$)/.exec(plain);
  if (lib) return `failed to load ${lib[1] ?? ""}: ${(lib[2] ?? "").trim()}`;
  const missing = /(\S+\.so[.\d]*): cannot open shared object file/.exec(plain);
  if (missing) return `${missing[1] ?? ""}: cannot open shared object file`;
  const first = plain.split("\n").find((l) => l.trim().length > 0) ?? plain;
  return first.trim().slice(0, 300);
}
