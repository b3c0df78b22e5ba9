/**
 * Block-wise symmetric 8-bit quantization of a matmul weight in the layout of onnxruntime's
 * `com.microsoft.MatMulNBits` (bits = 8): for output column n and block b of `blockSize`
 * consecutive rows k, one float scale = max|w| / 127 and bytes q = round(w / scale) + 128, so
 * w ≈ (q − 128) · scale with an error of at most scale / 2.
 */
export interface Int8Weight {
  /** Rows of the weight (the matmul's inner dimension). */
  k: number;
  /** Columns (outputs). */
  n: number;
  blockSize: number;
  /** [n, k / blockSize, blockSize]: each column's blocks, one byte per weight. */
  data: Uint8Array;
  /** [n · k / blockSize] */
  scales: Float32Array;
  /** [n · k / blockSize], all 128 (symmetric). */
  zeroPoints: Uint8Array;
}

/** The zero point of a symmetric 8-bit block: (q − 128) spans −127…127. */
const ZERO_POINT = 128;

/**
 * What `aitbc models build --weights int8` and `aitbc models quantize` use unless told
 * otherwise, chosen by `npm run bench:int8` on gpt2-124m-random (README, "int8 weights"):
 * - blockSize 32: rows per scale. Against float32, mean KL 2.37e-3 nats against 3.14e-3 for
 *   64 and 3.68e-3 for 128, at decode speeds within the runs' noise of each other (the larger
 *   scale share, 5 bytes per 32 weights, costs less than the load of a shared host varies).
 * - accuracyLevel 4: activations are quantized to int8 per block too, so the CPU runs integer
 *   dot products (VNNI/AMX); levels 0 and 1 dequantize to float32 and, though closer to
 *   float32 (KL 1.2e-3 at block 32), decode 15 to 50 times slower than level 4.
 * - float32Layers 1: the first transformer block's four matmuls stay float32. Of the 49
 *   matmuls, those four carry half of int8's distance from float32 (mean KL 1.31e-3 instead of
 *   2.50e-3 over 768 positions; its attn.c_attn alone 1.91e-3, any one later layer at most
 *   0.25e-3 less), for 8% of the layer weights: a decode step reads about 14% more bytes.
 */
export const INT8_DEFAULTS = { blockSize: 32, accuracyLevel: 4, float32Layers: 1 } as const;

/**
 * The transformer block a GPT-2 weight or node belongs to, from its name: `h.<i>` between dots
 * or slashes, as both Hugging Face's parameter names (`transformer.h.3.mlp.c_fc.weight`) and
 * torch's exported node names (`/transformer/h.3/mlp/c_fc/MatMul`) have it; undefined for a
 * name outside the blocks (wte, wpe, ln_f) or one that does not say.
 */
export function gpt2LayerOf(name: string): number | undefined {
  const m = /(?:^|[./])h\.(\d+)(?:[./]|$)/.exec(name);
  return m === null ? undefined : Number(m[1]);
}

/** The block sizes MatMulNBits takes: powers of two from 16. */
export const INT8_BLOCK_SIZES: readonly number[] = [16, 32, 64, 128, 256];

/**
 * The block size for an inner dimension k: the largest power of two from 16 up to `preferred`
 * that divides it (MatMulNBits needs a power of two of at least 16), so that a narrow matmul
 * still gets blocks; throws when none does.
 */
export function int8BlockSize(k: number, preferred: number = INT8_DEFAULTS.blockSize): number {
  if (!INT8_BLOCK_SIZES.includes(preferred)) throw new Error(`a block size must be one of ${INT8_BLOCK_SIZES.join(", ")}, not ${preferred}`);
  for (let size = preferred; size >= 16; size /= 2) if (k % size === 0) return size;
  throw new Error(`an inner dimension of ${k} cannot be split into 8-bit blocks of at most ${preferred} (it must be a multiple of 16)`);
}

/**
 * Quantizes a weight given as a flat float array, either [k, n] row-major ("kn": GPT-2's
 * Conv1D weights, y = x · W) or [n, k] ("nk": an embedding used as the lm_head, y = x · Eᵀ).
 */
export function quantizeInt8(weight: Float32Array, k: number, n: number, layout: "kn" | "nk", blockSize = int8BlockSize(k)): Int8Weight {
  if (weight.length !== k * n) throw new Error(`weight has ${weight.length} values, not ${k} × ${n}`);
  if (k % blockSize !== 0) throw new Error(`block size ${blockSize} does not divide ${k}`);
  const blocks = k / blockSize;
  const data = new Uint8Array(n * k);
  const scales = new Float32Array(n * blocks);
  const zeroPoints = new Uint8Array(n * blocks).fill(ZERO_POINT);
  const at = layout === "kn" ? (row: number, col: number): number => row * n + col : (row: number, col: number): number => col * k + row;
  for (let col = 0; col < n; col++) {
    for (let b = 0; b < blocks; b++) {
      const first = b * blockSize;
      let max = 0;
      for (let j = 0; j < blockSize; j++) max = Math.max(max, Math.abs(weight[at(first + j, col)] as number));
      // An all-zero block keeps scale 1 so dequantization stays finite (its bytes are all 128).
      const scale = max === 0 ? 1 : Math.fround(max / 127);
      scales[col * blocks + b] = scale;
      const out = (col * blocks + b) * blockSize;
      for (let j = 0; j < blockSize; j++) {
        const q = Math.round((weight[at(first + j, col)] as number) / scale);
        data[out + j] = Math.min(127, Math.max(-127, q)) + ZERO_POINT;
      }
    }
  }
  return { k, n, blockSize, data, scales, zeroPoints };
}

/** The float a quantized weight stands for: (q − zero point) · scale, at [row, col]. */
export function dequantizeInt8(w: Int8Weight, row: number, col: number): number {
  const blocks = w.k / w.blockSize;
  const b = Math.floor(row / w.blockSize);
  const q = w.data[(col * blocks + b) * w.blockSize + (row % w.blockSize)] as number;
  return (q - (w.zeroPoints[col * blocks + b] as number)) * (w.scales[col * blocks + b] as number);
}
