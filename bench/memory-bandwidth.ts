/**
 * Memory bandwidth of this machine, measured on every CPU at once (decoding uses them all),
 * best of three rounds, for the bandwidth bounds in bench:inference.
 *
 * - copy: large Buffer copies, counting bytes read plus bytes written as STREAM's copy does.
 * - read: a WebAssembly SIMD loop that only loads and adds (four 16-byte accumulators), which
 *   is what a decode step does with its weights: read them once, write next to nothing.
 */
import { availableParallelism } from "node:os";
import { Worker } from "node:worker_threads";

/*
 * The read kernel, hand-assembled; in text form:
 *   (module
 *     (memory (export "mem") 4096)                          ;; 256 MiB per worker
 *     (func (export "sum") (param $p i32) (param $end i32) (result f32)
 *       (local $a v128) (local $b v128) (local $c v128) (local $d v128)
 *       (loop $next
 *         (local.set $a (f32x4.add (local.get $a) (v128.load offset=0 (local.get $p))))
 *         …the same for $b, $c, $d at offsets 16, 32, 48…
 *         (br_if $next (i32.lt_u (local.tee $p (i32.add (local.get $p) (i32.const 64))) (local.get $end))))
 *       (f32x4.extract_lane 0 (f32x4.add (f32x4.add (f32x4.add (local.get $a) (local.get $b)) (local.get $c)) (local.get $d)))))
 * The sum is returned so the loads cannot be optimised away.
 */
const READ_KERNEL_HEX = [
  "00 61 73 6d 01 00 00 00", // magic, version 1
  "01 07 01 60 02 7f 7f 01 7d", // type: (i32, i32) -> f32
  "03 02 01 00", // one function of that type
  "05 04 01 00 80 20", // memory: 4096 pages
  "07 0d 02 03 6d 65 6d 02 00 03 73 75 6d 00 00", // exports "mem", "sum"
  "0a 5e 01 5c", // code section (94 bytes): one body of 92
  "01 04 7b", // four v128 locals
  "03 40", // loop
  "20 02 20 00 fd 00 04 00 fd e4 01 21 02",
  "20 03 20 00 fd 00 04 10 fd e4 01 21 03",
  "20 04 20 00 fd 00 04 20 fd e4 01 21 04",
  "20 05 20 00 fd 00 04 30 fd e4 01 21 05",
  "20 00 41 c0 00 6a 22 00 20 01 49 0d 00", // p += 64; continue while p < end
  "0b", // end loop
  "20 02 20 03 fd e4 01 20 04 fd e4 01 20 05 fd e4 01 fd 1f 00 0b",
].join(" ");

/** The worker side of both measurements: prepares its buffers, then times `reps` passes on each "go". */
const WORKER = `
  const { parentPort, workerData } = require("node:worker_threads");
  const { mode, reps, kernel } = workerData;
  let pass, bytesPerPass;
  if (mode === "copy") {
    const size = 128 << 20;
    const a = Buffer.alloc(size, 1), b = Buffer.alloc(size);
    pass = () => a.copy(b);
    bytesPerPass = 2 * size;
  } else {
    const bytes = Uint8Array.from(kernel.split(" ").map((h) => parseInt(h, 16)));
    const { exports } = new WebAssembly.Instance(new WebAssembly.Module(bytes));
    const size = exports.mem.buffer.byteLength;
    // Written first: untouched pages all map the kernel's one zero page, which stays in cache.
    new Float32Array(exports.mem.buffer).fill(1);
    // Called per MiB so V8 moves the kernel to its optimising tier within the warm-up.
    const chunk = 1 << 20;
    let sink = 0;
    pass = () => { for (let p = 0; p < size; p += chunk) sink += exports.sum(p, p + chunk); return sink; };
    bytesPerPass = size;
  }
  for (let i = 0; i < 3; i++) pass();
  parentPort.on("message", () => {
    const t = process.hrtime.bigint();
    for (let i = 0; i < reps; i++) pass();
    parentPort.postMessage(Number(process.hrtime.bigint() - t) / 1e9);
  });
  parentPort.postMessage(bytesPerPass);`;

async function measure(mode: "copy" | "read"): Promise<number> {
  const threads = availableParallelism();
  const reps = 6;
  const workers = Array.from({ length: threads }, () => new Worker(WORKER, { eval: true, workerData: { mode, reps, kernel: READ_KERNEL_HEX } }));
  const next = (w: Worker): Promise<unknown> => new Promise((resolve, reject) => w.once("message", resolve).once("error", reject));
  try {
    const [bytesPerPass] = (await Promise.all(workers.map(next))) as number[];
    let best = 0;
    for (let round = 0; round < 3; round++) {
      const done = workers.map(next);
      const t = process.hrtime.bigint();
      for (const w of workers) w.postMessage("go");
      await Promise.all(done);
      const seconds = Number(process.hrtime.bigint() - t) / 1e9;
      best = Math.max(best, (threads * reps * (bytesPerPass ?? 0)) / seconds);
    }
    return best;
  } finally {
    await Promise.all(workers.map((w) => w.terminate()));
  }
}

/** Bytes per second of a STREAM-style copy (read + written) on every CPU at once. */
export function copyBandwidth(): Promise<number> {
  return measure("copy");
}

/** Bytes per second read (and only read) on every CPU at once. */
export function readBandwidth(): Promise<number> {
  return measure("read");
}
