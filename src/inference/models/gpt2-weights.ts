import { Prng, tensorSeed } from "../../common/prng.js";

/** The shape of a GPT-2 model, in Hugging Face's config.json terms. */
export interface Gpt2Config {
  nLayer: number;
  nHead: number;
  nEmbd: number;
  nPositions: number;
  vocabSize: number;
  bosTokenId: number;
  eosTokenId: number;
}

/**
 * Standard deviations for seeded random weights. GPT-2's own init (0.02 everywhere) gives a
 * tiny model nearly tied logits, so greedy decoding would depend on rounding; recipes for
 * small models use larger scales to keep the top logits well apart.
 */
export interface Gpt2Init {
  wteStd: number;
  wpeStd: number;
  /** c_attn and c_fc weights. */
  weightStd: number;
  /** The two projections that write into the residual stream (attn.c_proj, mlp.c_proj). */
  projStd: number;
  biasStd: number;
  /** LayerNorm weights are 1 + N(0, lnStd²), biases N(0, lnStd²). */
  lnStd: number;
}

export interface NamedTensor {
  /** Hugging Face state-dict name, e.g. "transformer.h.0.attn.c_attn.weight". */
  name: string;
  dims: number[];
  data: Float32Array;
}

/** Parameter count of a GPT-2 with a tied lm_head (gpt2-small: 124,439,808). */
export function gpt2ParameterCount(c: Gpt2Config): number {
  const e = c.nEmbd;
  const perLayer = 2 * e + (e * 3 * e + 3 * e) + (e * e + e) + 2 * e + (e * 4 * e + 4 * e) + (4 * e * e + e);
  return c.vocabSize * e + c.nPositions * e + c.nLayer * perLayer + 2 * e;
}

/**
 * All weights in state-dict order. Conv1D weights are [in, out] as in GPT-2. Each tensor has
 * its own stream seeded from (seed, name), so a tensor's values do not depend on the others.
 */
export function initGpt2Weights(c: Gpt2Config, init: Gpt2Init, seed: number): NamedTensor[] {
  const e = c.nEmbd;
  const out: NamedTensor[] = [];
  const normal = (name: string, dims: number[], std: number, mean = 0): void => {
    const size = dims.reduce((a, b) => a * b, 1);
    out.push({ name, dims, data: new Prng(tensorSeed(seed, name)).normalArray(size, std, mean) });
  };
  normal("transformer.wte.weight", [c.vocabSize, e], init.wteStd);
  normal("transformer.wpe.weight", [c.nPositions, e], init.wpeStd);
  for (let i = 0; i < c.nLayer; i++) {
    const p = `transformer.h.${i}`;
    normal(`${p}.ln_1.weight`, [e], init.lnStd, 1);
    normal(`${p}.ln_1.bias`, [e], init.lnStd);
    normal(`${p}.attn.c_attn.weight`, [e, 3 * e], init.weightStd);
    normal(`${p}.attn.c_attn.bias`, [3 * e], init.biasStd);
    normal(`${p}.attn.c_proj.weight`, [e, e], init.projStd);
    normal(`${p}.attn.c_proj.bias`, [e], init.biasStd);
    normal(`${p}.ln_2.weight`, [e], init.lnStd, 1);
    normal(`${p}.ln_2.bias`, [e], init.lnStd);
    normal(`${p}.mlp.c_fc.weight`, [e, 4 * e], init.weightStd);
    normal(`${p}.mlp.c_fc.bias`, [4 * e], init.biasStd);
    normal(`${p}.mlp.c_proj.weight`, [4 * e, e], init.projStd);
    normal(`${p}.mlp.c_proj.bias`, [e], init.biasStd);
  }
  normal("transformer.ln_f.weight", [e], init.lnStd, 1);
  normal("transformer.ln_f.bias", [e], init.lnStd);
  return out;
}
