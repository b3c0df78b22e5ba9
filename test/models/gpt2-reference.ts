import type { NamedTensor } from "../../src/inference/models/gpt2-weights.js";

/**
 * An independent, plain TypeScript GPT-2 forward pass written from the GPT-2 definition
 * (Radford et al. 2019 / Hugging Face GPT2LMHeadModel), used to check the ONNX graph.
 * Float64 throughout; one sequence at a time.
 */
export interface RefShape {
  nLayer: number;
  nHead: number;
  nEmbd: number;
  vocabSize: number;
}

export interface RefKv {
  /** Per layer: keys and values, each [H][T][D]. */
  keys: number[][][][];
  values: number[][][][];
}

export function emptyKv(s: RefShape): RefKv {
  const mk = (): number[][][][] => Array.from({ length: s.nLayer }, () => Array.from({ length: s.nHead }, () => []));
  return { keys: mk(), values: mk() };
}

/**
 * Runs tokens `ids` at positions `positions`, attending to the cache plus themselves.
 * `keyMask` (length past + S) marks which key positions may be attended (1) or are padding (0).
 * Returns logits [S][V] and appends this chunk's keys/values to `kv`.
 */
export function referenceForward(s: RefShape, w: Map<string, NamedTensor>, ids: number[], positions: number[], kv: RefKv, keyMask?: number[]): number[][] {
  const e = s.nEmbd;
  const d = e / s.nHead;
  const get = (n: string): Float32Array => {
    const t = w.get(n);
    if (!t) throw new Error(n);
    return t.data;
  };
  const wte = get("transformer.wte.weight");
  const wpe = get("transformer.wpe.weight");
  const layerNorm = (x: number[], g: Float32Array, b: Float32Array): number[] => {
    const mean = x.reduce((a, v) => a + v, 0) / x.length;
    const variance = x.reduce((a, v) => a + (v - mean) ** 2, 0) / x.length;
    return x.map((v, i) => ((v - mean) / Math.sqrt(variance + 1e-5)) * g[i]! + b[i]!);
  };
  // Conv1D: y = x·W + b with W stored [in, out].
  const conv1d = (x: number[], W: Float32Array, b: Float32Array): number[] => {
    const out = Array.from(b, Number);
    for (let i = 0; i < x.length; i++) for (let j = 0; j < out.length; j++) out[j]! += x[i]! * W[i * out.length + j]!;
    return out;
  };
  const geluNew = (x: number): number => 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3)));

  const past = kv.keys[0]![0]!.length;
  let hidden = ids.map((id, t) => Array.from({ length: e }, (_, j) => wte[id * e + j]! + wpe[positions[t]! * e + j]!));
  for (let l = 0; l < s.nLayer; l++) {
    const p = `transformer.h.${l}`;
    const qkv = hidden.map((x) => conv1d(layerNorm(x, get(`${p}.ln_1.weight`), get(`${p}.ln_1.bias`)), get(`${p}.attn.c_attn.weight`), get(`${p}.attn.c_attn.bias`)));
    for (let h = 0; h < s.nHead; h++) {
      for (const row of qkv) {
        kv.keys[l]![h]!.push(row.slice(e + h * d, e + (h + 1) * d));
        kv.values[l]![h]!.push(row.slice(2 * e + h * d, 2 * e + (h + 1) * d));
      }
    }
    hidden = hidden.map((x, t) => {
      const context: number[] = [];
      for (let h = 0; h < s.nHead; h++) {
        const q = qkv[t]!.slice(h * d, (h + 1) * d);
        const keys = kv.keys[l]![h]!;
        // Query t sits at cache index past + t and may see keys 0..past + t (causal), unless padded.
        const scores = keys.map((k, j) => {
          const visible = j <= past + t && (keyMask === undefined || keyMask[j] === 1);
          return visible ? q.reduce((a, v, i) => a + v * k[i]!, 0) / Math.sqrt(d) : -Infinity;
        });
        const max = Math.max(...scores);
        const ex = scores.map((v) => (v === -Infinity ? 0 : Math.exp(v - max)));
        const sum = ex.reduce((a, v) => a + v, 0);
        // A query that may see nothing (a padding position) gets a zero context; its outputs are never used.
        for (let i = 0; i < d; i++) context.push(sum === 0 ? 0 : ex.reduce((a, pr, j) => (pr === 0 ? a : a + (pr / sum) * kv.values[l]![h]![j]![i]!), 0));
      }
      const attn = conv1d(context, get(`${p}.attn.c_proj.weight`), get(`${p}.attn.c_proj.bias`));
      const x1 = x.map((v, i) => v + attn[i]!);
      const fc = conv1d(layerNorm(x1, get(`${p}.ln_2.weight`), get(`${p}.ln_2.bias`)), get(`${p}.mlp.c_fc.weight`), get(`${p}.mlp.c_fc.bias`)).map(geluNew);
      const mlp = conv1d(fc, get(`${p}.mlp.c_proj.weight`), get(`${p}.mlp.c_proj.bias`));
      return x1.map((v, i) => v + mlp[i]!);
    });
  }
  return hidden.map((x) => {
    const f = layerNorm(x, get("transformer.ln_f.weight"), get("transformer.ln_f.bias"));
    // Tied lm_head: logits = ln_f(x) · wteᵀ.
    return Array.from({ length: s.vocabSize }, (_, v) => f.reduce((a, val, j) => a + val * wte[v * e + j]!, 0));
  });
}
