import { availableParallelism, cpus } from "node:os";
import { setTimeout as sleep } from "node:timers/promises";
import * as ort from "onnxruntime-node";
import { AppError, errorMessage } from "../common/errors.js";
import { checkCudaProvider, describeCudaProviderProblem } from "./cuda-provider.js";

// onnxruntime-node 1.30 on Linux starts Microsoft's 1DS telemetry with the first session: it opens
// an empty /tmp/mat-debug-<pid>.log (the SDK's trace file), keeps a device id and an event cache
// under ~/.cache/Microsoft/DeveloperTools/.onnxruntime and uploads usage events. A miner should
// neither litter /tmp nor call out to anyone but its coordinator, so it is off unless the operator
// sets ORT_DISABLE_TELEMETRY themselves. The variable is read when the environment is created,
// after this module has run; this module is loaded on the main thread (onnx-engine.ts), whose
// process.env is the real environment (a worker thread's is a copy native code does not see).
process.env.ORT_DISABLE_TELEMETRY ??= "1";

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
  /** intra_op.allow_spinning, decided by the caller ({@link decideThreadSpinning}); unset, onnxruntime's default (spin). */
  threadSpinning?: boolean;
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
    ...(settings.threadSpinning === false ? { extra: { session: { "intra_op.allow_spinning": "0" } } } : {}),
  };
}

/** Other processes' CPU use at or above this (in CPUs) turns "auto" spinning off. */
export const SPIN_OTHERS_LIMIT = 0.5;

/**
 * Whether onnxruntime's intra-op threads should spin, given how many CPUs' worth of time
 * other processes are using now. "auto": only while they use under half a CPU, because
 * spinning threads fight other busy processes for the cores and decoding then slows down
 * several times; on a quiet host spinning decodes about 7% faster (bench:inference).
 */
export function resolveThreadSpinning(setting: boolean | "auto" | undefined, othersCpuLoad: number): boolean {
  if (setting === true || setting === false) return setting;
  return othersCpuLoad < SPIN_OTHERS_LIMIT;
}

/**
 * Resolves `thread_spinning`; for "auto", first measures other processes' CPU use
 * ({@link otherProcessesCpuLoad}). Measured now rather than read from the load average, which
 * trails by a minute and counts this process too: a miner restarted after a busy run would
 * otherwise take its own former load for a neighbour's and never spin.
 */
export async function decideThreadSpinning(setting: boolean | "auto" | undefined): Promise<{ spinning: boolean; othersCpuLoad?: number }> {
  if (setting === true || setting === false) return { spinning: setting };
  const othersCpuLoad = await otherProcessesCpuLoad();
  return { spinning: resolveThreadSpinning(setting, othersCpuLoad), othersCpuLoad };
}

/** Busy and own CPU time so far, in milliseconds: what {@link otherProcessesCpuLoad} differences. */
export interface CpuTimes {
  /** Non-idle time of every CPU together (user, nice, system, irq). */
  busyMs: number;
  /** This process's own time, every thread (process.cpuUsage). */
  ownMs: number;
}

export function cpuTimes(): CpuTimes {
  const busyMs = cpus().reduce((sum, c) => sum + c.times.user + c.times.nice + c.times.sys + c.times.irq, 0);
  const own = process.cpuUsage();
  return { busyMs, ownMs: (own.user + own.system) / 1000 };
}

/** CPUs' worth of busy time between two samples `elapsedMs` apart, less this process's own. */
export function othersLoadBetween(a: CpuTimes, b: CpuTimes, elapsedMs: number): number {
  if (elapsedMs <= 0) return 0;
  return Math.max(0, (b.busyMs - a.busyMs - (b.ownMs - a.ownMs)) / elapsedMs);
}

/** How many CPUs' worth of time other processes use, measured over `windowMs`. */
export async function otherProcessesCpuLoad(windowMs = 300): Promise<number> {
  const a = cpuTimes();
  const t = performance.now();
  await sleep(windowMs);
  return othersLoadBetween(a, cpuTimes(), performance.now() - t);
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
