/**
 * Memory bandwidth of this machine, measured on every CPU at once (decoding uses them all),
 * best of three rounds, for the bandwidth bounds in bench:inference.
 *
 * - copy: large Buffer copies, counting bytes read plus bytes written as STREAM's copy does.
 * - read: a WebAssembly SIMD loop that only loads and adds (four streams side by side, one
 *   16-byte accumulator each), which is what a decode step does with its weights: read them
 *   once, write next to nothing.
 */
import { availableParallelism } from "node:os";
import { Worker } from "node:worker_threads";

/*
 * The read kernel, hand-assembled; in text form:
 *   (module
 *     (memory (export "mem") 4096)                          ;; 256 MiB per worker
 *     (func (export "sum") (param $p i32) (param $end i32) (param $stride i32) (result f32)
 *       ;; four streams, $stride bytes apart, read side by side (as a matmul reads its columns)
 *       (local $q i32) (local $r i32) (local $s i32) (local $a v128) (local $b v128) (local $c v128) (local $d v128)
 *       (local.set $q (i32.add (local.get $p) (local.get $stride)))   ;; and $r, $s after it
 *       (loop $next
 *         (local.set $a (f32x4.add (local.get $a) (v128.load offset=0 (local.get $p))))
 *         (local.set $a (f32x4.add (local.get $a) (v128.load offset=16 (local.get $p))))
 *         …the same for $b at $q, $c at $r, $d at $s; then each pointer += 32…
 *         (br_if $next (i32.lt_u (local.get $p) (local.get $end))))
 *       (f32x4.extract_lane 0 (f32x4.add (f32x4.add (f32x4.add (local.get $a) (local.get $b)) (local.get $c)) (local.get $d)))))
 * The sum is returned so the loads cannot be optimised away.
 */
function readKernel(): Uint8Array {
  const hex = (s: string): number[] => s.trim().split(/\s+/).map((h) => parseInt(h, 16));
  const leb = (n: number): number[] => (n < 0x80 ? [n] : [(n & 0x7f) | 0x80, ...leb(n >>> 7)]);
  const section = (id: number, content: number[]): number[] => [id, ...leb(content.length), ...content];
  const [p, end, stride, q, r, s, a, b, c, d] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9].map((i) => i.toString(16).padStart(2, "0"));
  const code = [`02 03 7f 04 7b`, `20 ${p} 20 ${stride} 6a 21 ${q}`, `20 ${q} 20 ${stride} 6a 21 ${r}`, `20 ${r} 20 ${stride} 6a 21 ${s}`, "03 40"];
  for (const [acc, ptr] of [[a, p], [b, q], [c, r], [d, s]]) {
    for (const offset of ["00", "10"]) code.push(`20 ${acc} 20 ${ptr} fd 00 04 ${offset} fd e4 01 21 ${acc}`); // acc = f32x4.add(acc, v128.load(ptr + offset))
  }
  for (const ptr of [p, q, r, s]) code.push(`20 ${ptr} 41 20 6a 21 ${ptr}`); // ptr += 32
  code.push(`20 ${p} 20 ${end} 49 0d 00 0b`); // br_if p < end; end loop
  code.push(`20 ${a} 20 ${b} fd e4 01 20 ${c} fd e4 01 20 ${d} fd e4 01 fd 1f 00 0b`); // lane 0 of a+b+c+d
  const body = hex(code.join(" "));
  return Uint8Array.from([
    ...hex("00 61 73 6d 01 00 00 00"), // magic, version 1
    ...section(1, hex("01 60 03 7f 7f 7f 01 7d")), // type: (i32, i32, i32) -> f32
    ...section(3, hex("01 00")), // one function of that type
    ...section(5, hex("01 00 80 20")), // memory: 4096 pages
    ...section(7, hex("02 03 6d 65 6d 02 00 03 73 75 6d 00 00")), // exports "mem", "sum"
    ...section(10, [1, ...leb(body.length), ...body]),
  ]);
}

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
    const { exports } = new WebAssembly.Instance(new WebAssembly.Module(kernel));
    const size = exports.mem.buffer.byteLength;
    // Written first: untouched pages all map the kernel's one zero page, which stays in cache.
    new Float32Array(exports.mem.buffer).fill(1);
    // Called per 4 MiB (four streams of 1 MiB) so V8 moves the kernel to its optimising tier within the warm-up.
    const chunk = 1 << 22, stride = chunk / 4;
    let sink = 0;
    pass = () => { for (let p = 0; p < size; p += chunk) sink += exports.sum(p, p + stride, stride); return sink; };
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
  const workers = Array.from({ length: threads }, () => new Worker(WORKER, { eval: true, workerData: { mode, reps, kernel: readKernel() } }));
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
