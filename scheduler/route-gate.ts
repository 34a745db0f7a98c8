// Learned-gate routing (Mixtral, Qwen-MoE, OLMoE, DeepSeek-MoE): softmax over gate·x, top-k.
// Logits, softmax and weights are computed in float64 in a fixed order, so two runs — on any machine
// — choose the same experts; ties go to the lower expert index. Since softmax is monotonic the top-k
// of the probabilities is the top-k of the logits; the full softmax is still needed for the weights
// when they are not renormalised.
import { HetmoeError, badOption } from '../runtime/errors.js'
import { checkSelection, countsToOffsets, type Selection } from './selection.js'

export interface GateRouterOptions {
  /** fp32 [numExperts × hiddenSize], row-major. */
  weight: Float32Array
  numExperts: number
  hiddenSize: number
  topK: number
  /** Renormalise the k chosen weights to sum to 1 (Mixtral does; Qwen-MoE and OLMoE do not by default). */
  normalize: boolean
}

export class GateRouter {
  readonly numExperts: number
  readonly hiddenSize: number
  readonly topK: number
  readonly normalize: boolean
  readonly #weight: Float32Array
  // Scratch, grown only when a larger batch arrives, so steady-state routing allocates nothing.
  #logits: Float64Array
  #cursor: Int32Array
  #chosen = new Int32Array(0)
  #chosenWeight = new Float64Array(0)

  constructor(options: GateRouterOptions) {
    const { weight, numExperts: E, hiddenSize: D, topK, normalize } = options
    if (!Number.isInteger(E) || E <= 0) throw badOption('numExperts', 'a positive integer', E)
    if (!Number.isInteger(D) || D <= 0) throw badOption('hiddenSize', 'a positive integer', D)
    if (!Number.isInteger(topK) || topK <= 0 || topK > E) throw badOption('topK', `an integer in [1, ${E}]`, topK)
    if (!(weight instanceof Float32Array) || weight.length !== E * D)
      throw new HetmoeError('BAD_MODEL', `gate weight must be fp32 [${E} × ${D}] (${E * D} values; got ${weight?.length})`)
    this.numExperts = E
    this.hiddenSize = D
    this.topK = topK
    this.normalize = normalize
    this.#weight = weight
    this.#logits = new Float64Array(E)
    this.#cursor = new Int32Array(E)
  }

  /** The gate weight, fp32 [E × D] (for a native GEMM feeding routeLogits). */
  get weight(): Float32Array {
    return this.#weight
  }

  /** Throws BAD_INPUT naming the first row holding NaN or ±Infinity. */
  checkHidden(hidden: Float32Array, numTokens: number): void {
    const D = this.hiddenSize
    if (!Number.isInteger(numTokens) || numTokens < 0) throw badOption('numTokens', 'a non-negative integer', numTokens)
    if (hidden.length < numTokens * D)
      throw new HetmoeError('BAD_INPUT', `hidden states hold ${hidden.length} values; ${numTokens} tokens × ${D} need ${numTokens * D}`)
    for (let i = 0, n = numTokens * D; i < n; i++) {
      const v = hidden[i]
      if (v - v !== 0) {
        const row = Math.floor(i / D)
        throw new HetmoeError('BAD_INPUT', `hidden state row ${row} (column ${i - row * D}) is ${v}; routing needs finite values`)
      }
    }
  }

  /**
   * Routes `numTokens` rows of `hidden` (fp32 [T × D]) into `out`; returns the number of routed rows
   * (T·K). Validates before writing; allocation-free once scratch has grown to the batch size.
   */
  route(hidden: Float32Array, numTokens: number, out: Selection): number {
    this.checkHidden(hidden, numTokens)
    checkSelection(out, this.numExperts, numTokens * this.topK)
    this.#grow(numTokens)
    this.logits(hidden, numTokens, this.#logits)
    return this.#select(this.#logits, numTokens, out)
  }

  /**
   * The gate's logits, float64 [T × E] into `out`: eight partial sums a_{j mod 8} over j < 8⌊D/8⌋,
   * the tail into a_0 in ascending j, then ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7)) —
   * the same bits on every run and machine, and as the native GEMM (native/cpu/router_math.h) on
   * every ISA: each float32 × float32 product is exact in float64, so only the order of the adds
   * matters, and that order is fixed here.
   */
  logits(hidden: Float32Array, numTokens: number, out: Float64Array): Float64Array {
    const E = this.numExperts
    const D = this.hiddenSize
    const D8 = D - (D % 8)
    const w = this.#weight
    for (let t = 0; t < numTokens; t++) {
      const x = t * D
      for (let e = 0; e < E; e++) {
        const r = e * D
        let a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0
        for (let j = 0; j < D8; j += 8) {
          a0 += w[r + j] * hidden[x + j]
          a1 += w[r + j + 1] * hidden[x + j + 1]
          a2 += w[r + j + 2] * hidden[x + j + 2]
          a3 += w[r + j + 3] * hidden[x + j + 3]
          a4 += w[r + j + 4] * hidden[x + j + 4]
          a5 += w[r + j + 5] * hidden[x + j + 5]
          a6 += w[r + j + 6] * hidden[x + j + 6]
          a7 += w[r + j + 7] * hidden[x + j + 7]
        }
        for (let j = D8; j < D; j++) a0 += w[r + j] * hidden[x + j]
        out[t * E + e] = a0 + a1 + (a2 + a3) + (a4 + a5 + (a6 + a7))
      }
    }
    return out
  }

  /**
   * Routes from gate logits computed elsewhere ([T × E], e.g. by a native GEMM — the JS gate GEMM is
   * the costly part at large D·E). Same top-k, weights and layout as route().
   */
  routeLogits(logits: Float32Array | Float64Array, numTokens: number, out: Selection): number {
    const E = this.numExperts
    if (logits.length < numTokens * E)
      throw new HetmoeError('BAD_INPUT', `logits hold ${logits.length} values; ${numTokens} tokens × ${E} experts need ${numTokens * E}`)
    for (let i = 0, n = numTokens * E; i < n; i++)
      if (logits[i] - logits[i] !== 0) throw new HetmoeError('BAD_INPUT', `gate logit of token ${Math.floor(i / E)}, expert ${i % E} is ${logits[i]}`)
    checkSelection(out, E, numTokens * this.topK)
    this.#grow(numTokens)
    return this.#select(logits, numTokens, out)
  }

  #grow(numTokens: number): void {
    const rows = numTokens * this.topK
    if (this.#chosen.length < rows) {
      this.#chosen = new Int32Array(rows)
      this.#chosenWeight = new Float64Array(rows)
    }
    if (this.#logits.length < numTokens * this.numExperts) this.#logits = new Float64Array(numTokens * this.numExperts)
  }

  /**
   * Softmax (float64), top-k with ties to the lower index, then the counting sort into `out`. The
   * top-k of the probabilities is the top-k of the logits, so the k experts are picked on logits, in
   * one pass over the experts: the chosen list stays ordered by (logit descending, index ascending),
   * and a later expert displaces one only with a strictly greater logit — the same k, in the same
   * order, as picking the lowest-index maximum k times. Renormalised weights exp(l_k − max) /
   * Σ_chosen exp(l_j − max) need only the chosen exponentials (the best one is exp(0) = 1), and the
   * full softmax denominator only when they are not renormalised.
   */
  #select(logits: Float32Array | Float64Array, numTokens: number, out: Selection): number {
    const E = this.numExperts
    const K = this.topK
    const normalize = this.normalize
    const chosen = this.#chosen
    const chosenWeight = this.#chosenWeight
    const { counts, offsets, tokenRows, outRows, scales } = out
    counts.fill(0, 0, E)
    for (let t = 0; t < numTokens; t++) {
      const l = t * E
      const c = t * K
      // chosenWeight holds the chosen logits until the weights replace them.
      let n = 0
      for (let e = 0; e < E; e++) {
        const v = logits[l + e]
        if (n === K && !(v > chosenWeight[c + K - 1])) continue
        let p = n < K ? n++ : K - 1
        for (; p > 0 && chosenWeight[c + p - 1] < v; p--) {
          chosen[c + p] = chosen[c + p - 1]
          chosenWeight[c + p] = chosenWeight[c + p - 1]
        }
        chosen[c + p] = e
        chosenWeight[c + p] = v
      }
      const max = chosenWeight[c]
      let kept = 0
      for (let k = 0; k < K; k++) {
        const p = k === 0 ? 1 : Math.exp(chosenWeight[c + k] - max)
        chosenWeight[c + k] = p
        kept += p
        counts[chosen[c + k]]++
      }
      let denom = kept
      if (!normalize) {
        denom = 0
        for (let e = 0; e < E; e++) denom += Math.exp(logits[l + e] - max)
      }
      for (let k = 0; k < K; k++) chosenWeight[c + k] /= denom
    }

    countsToOffsets(counts, offsets, E)
    const cursor = this.#cursor
    for (let e = 0; e < E; e++) cursor[e] = offsets[e]
    for (let t = 0; t < numTokens; t++)
      for (let k = 0; k < K; k++) {
        const slot = t * K + k
        const i = cursor[chosen[slot]]++
        tokenRows[i] = t
        outRows[i] = slot
        scales[i] = chosenWeight[slot]
      }
    return numTokens * K
  }
}
