// The float64 reference of expert FFNs and whole MoE layers. Every kernel in hetmoe (CPU, GPU) is
// checked against these functions, so they are written to be obviously right: weights decoded by the
// reference decoder (formats.decompress = decodeRow in native/formats/layout.h), every product and
// sum in float64, routing spelled out step by step. Speed comes only from loop order (contiguous
// dot products over decoded rows), never from changing the arithmetic.
import { HetmoeError } from '../runtime/errors.js'
import type { FfnKind } from './manifest.js'
import type { Model } from './model.js'

/** One expert's dense weights (what the store holds, decoded): gate/up [F × D], down [D × F], row-major. */
export interface DenseExpert {
  ffn: FfnKind
  /** D. */
  hidden: number
  /** F (this expert's own: shared experts may differ from routed ones). */
  inner: number
  gate?: Float32Array | Float64Array
  up: Float32Array | Float64Array
  down: Float32Array | Float64Array
}

export function silu(x: number): number {
  return x / (1 + Math.exp(-x))
}

/** GeLU, tanh approximation: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))). */
export function gelu(x: number): number {
  return 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x * x * x)))
}

/** Selects which expert of a layer: a routed expert by index, or a shared expert. */
export type ExpertSelector = number | { shared: number }

/** Decodes one expert of a loaded model into dense fp32 matrices. */
export function denseExpert(model: Model, layer: number, expert: ExpertSelector): DenseExpert {
  const l = model.layer(layer)
  const ref = typeof expert === 'number' ? model.expert(layer, expert) : l.sharedExperts[expert.shared]
  if (!ref) throw new HetmoeError('BAD_INPUT', `layer ${layer} has no shared expert ${(expert as { shared: number }).shared}`)
  return {
    ffn: model.manifest.ffn,
    hidden: model.manifest.hiddenSize,
    inner: ref.up.rows,
    ...(ref.gate ? { gate: model.denseMatrix(ref.gate) } : {}),
    up: model.denseMatrix(ref.up),
    down: model.denseMatrix(ref.down),
  }
}

/**
 * y[T × rows] = x[T × cols] · Wᵀ in float64. Each output is one sequential sum over c (the textbook
 * dot product); tokens are taken four at a time only so each weight is loaded once for four sums —
 * the order of every sum, and so every result bit, is that of the plain triple loop.
 */
function matmulT(w: Float32Array | Float64Array, rows: number, cols: number, x: Float64Array, T: number): Float64Array {
  const y = new Float64Array(T * rows)
  let t = 0
  for (; t + 4 <= T; t += 4) {
    const x0 = t * cols
    const x1 = x0 + cols
    const x2 = x1 + cols
    const x3 = x2 + cols
    for (let r = 0; r < rows; r++) {
      const wo = r * cols
      let s0 = 0
      let s1 = 0
      let s2 = 0
      let s3 = 0
      for (let c = 0; c < cols; c++) {
        const wv = w[wo + c]
        s0 += wv * x[x0 + c]
        s1 += wv * x[x1 + c]
        s2 += wv * x[x2 + c]
        s3 += wv * x[x3 + c]
      }
      y[t * rows + r] = s0
      y[(t + 1) * rows + r] = s1
      y[(t + 2) * rows + r] = s2
      y[(t + 3) * rows + r] = s3
    }
  }
  for (; t < T; t++) {
    const xo = t * cols
    for (let r = 0; r < rows; r++) {
      const wo = r * cols
      let s = 0
      for (let c = 0; c < cols; c++) s += w[wo + c] * x[xo + c]
      y[t * rows + r] = s
    }
  }
  return y
}

/** The expert FFN on T tokens: x is T × D (fp32 or fp64), the result T × D in float64. */
export function denseExpertForwardRef(e: DenseExpert, x: Float32Array | Float64Array): Float64Array {
  const D = e.hidden
  const F = e.inner
  if (x.length % D !== 0) throw new HetmoeError('BAD_INPUT', `x has ${x.length} values, not a multiple of D = ${D}`)
  if (e.up.length !== F * D || e.down.length !== D * F || (e.gate && e.gate.length !== F * D)) {
    throw new HetmoeError('BAD_INPUT', `expert matrices do not match D = ${D}, F = ${F}`)
  }
  const T = x.length / D
  const x64 = Float64Array.from(x)
  const h = matmulT(e.up, F, D, x64, T)
  if (e.ffn === 'swiglu') {
    if (!e.gate) throw new HetmoeError('BAD_INPUT', 'a SwiGLU expert needs a gate matrix')
    const g = matmulT(e.gate, F, D, x64, T)
    for (let i = 0; i < h.length; i++) h[i] = silu(g[i]) * h[i]
  } else {
    for (let i = 0; i < h.length; i++) h[i] = gelu(h[i])
  }
  return matmulT(e.down, D, F, h, T)
}

/**
 * The expert FFN of a stored model (decoded weights), or of given dense weights:
 * `expertForwardRef(model, layer, expert, x)` / `expertForwardRef(denseExpert, x)`.
 */
export function expertForwardRef(model: Model, layer: number, expert: ExpertSelector, x: Float32Array | Float64Array): Float64Array
export function expertForwardRef(weights: DenseExpert, x: Float32Array | Float64Array): Float64Array
export function expertForwardRef(src: Model | DenseExpert, a: number | Float32Array | Float64Array, expert?: ExpertSelector, x?: Float32Array | Float64Array): Float64Array {
  if ('up' in src) return denseExpertForwardRef(src, a as Float32Array | Float64Array)
  return denseExpertForwardRef(denseExpert(src, a as number, expert!), x!)
}

/** Per token, the experts it goes to and their weights (k per token; RRE: k = 1, weight 1). */
export interface Routes {
  k: number
  /** int32 [T × k]: expert indices, in selection order (descending gate probability). */
  experts: Int32Array
  /** float64 [T × k]. */
  weights: Float64Array
}

/** RRE: expert = domains[d].firstExpert + table[d][tokenId]. */
export function rreRoutes(table: Int32Array, vocabSize: number, firstExpert: number, domain: number, tokenIds: ArrayLike<number>): Routes {
  const T = tokenIds.length
  const experts = new Int32Array(T)
  for (let t = 0; t < T; t++) {
    const v = tokenIds[t]
    if (!Number.isInteger(v) || v < 0 || v >= vocabSize) throw new HetmoeError('BAD_INPUT', `token id ${v} at position ${t} is outside the vocabulary [0, ${vocabSize})`)
    experts[t] = firstExpert + table[domain * vocabSize + v]
  }
  return { k: 1, experts, weights: new Float64Array(T).fill(1) }
}

/**
 * Learned gate: logits = W_gate · x (float64), softmax over all experts, the k largest (ties → the
 * lower expert index), optionally renormalised to sum 1.
 */
export function gateRoutes(gate: Float32Array | Float64Array, numExperts: number, x: Float32Array | Float64Array, D: number, topK: number, normalize: boolean): Routes {
  const T = x.length / D
  const logits = matmulT(gate, numExperts, D, Float64Array.from(x), T)
  const experts = new Int32Array(T * topK)
  const weights = new Float64Array(T * topK)
  const order = Array.from({ length: numExperts }, (_, i) => i)
  for (let t = 0; t < T; t++) {
    const l = logits.subarray(t * numExperts, (t + 1) * numExperts)
    let max = -Infinity
    for (const v of l) max = Math.max(max, v)
    const p = Array.from(l, (v) => Math.exp(v - max))
    const sum = p.reduce((a, b) => a + b, 0)
    for (let e = 0; e < numExperts; e++) p[e] /= sum
    const top = order.slice().sort((a, b) => p[b] - p[a] || a - b).slice(0, topK)
    const norm = normalize ? top.reduce((s, e) => s + p[e], 0) : 1
    top.forEach((e, j) => {
      experts[t * topK + j] = e
      weights[t * topK + j] = p[e] / norm
    })
  }
  return { k: topK, experts, weights }
}

export interface LayerInput {
  /** T × D hidden states. */
  x: Float32Array | Float64Array
  /** RRE layers: the token ids (T). */
  tokenIds?: ArrayLike<number>
  /** RRE layers: the domain (name or index). */
  domain?: string | number
}

/**
 * One whole MoE layer in float64: route, run each selected expert on its tokens, weight and sum
 * (per token, in selection order), then add the shared experts (weight 1, or Qwen2's sigmoid gate).
 * Decoded experts are cached in `cache` if given (decoding dominates for big models).
 */
export function layerForwardRef(model: Model, layer: number, input: LayerInput, cache: Map<string, DenseExpert> = new Map()): { out: Float64Array; routes: Routes } {
  const l = model.layer(layer)
  const D = model.manifest.hiddenSize
  const { x } = input
  if (x.length % D !== 0) throw new HetmoeError('BAD_INPUT', `x has ${x.length} values, not a multiple of D = ${D}`)
  const T = x.length / D
  let routes: Routes
  if (l.routing.kind === 'rre') {
    const { domains } = l.routing
    const d = typeof input.domain === 'string' ? domains.findIndex((g) => g.name === input.domain) : (input.domain ?? -1)
    if (!domains[d]) throw new HetmoeError('BAD_INPUT', `unknown domain ${JSON.stringify(input.domain)}; layer ${layer} has ${domains.map((g) => g.name).join(', ')}`)
    if (!input.tokenIds || input.tokenIds.length !== T) throw new HetmoeError('BAD_INPUT', `an RRE layer needs ${T} token ids`)
    routes = rreRoutes(model.rreTable(layer), model.manifest.vocabSize, domains[d].firstExpert, d, input.tokenIds)
  } else {
    routes = gateRoutes(model.gateWeight(layer), l.experts.length, x, D, l.routing.topK, l.routing.normalize)
  }
  const get = (sel: ExpertSelector): DenseExpert => {
    const key = `${layer}:${typeof sel === 'number' ? sel : `s${sel.shared}`}`
    let e = cache.get(key)
    if (!e) cache.set(key, (e = denseExpert(model, layer, sel)))
    return e
  }
  // Per expert: gather its tokens, run once, then scatter back weighted.
  const contrib = new Float64Array(T * routes.k * D) // [t][j][:] the j-th selected expert's output for token t
  for (let e = 0; e < l.experts.length; e++) {
    const slots: number[] = []
    for (let s = 0; s < T * routes.k; s++) if (routes.experts[s] === e) slots.push(s)
    if (!slots.length) continue
    const xs = new Float64Array(slots.length * D)
    slots.forEach((s, i) => xs.set(x.subarray(Math.floor(s / routes.k) * D, Math.floor(s / routes.k) * D + D), i * D))
    const ys = denseExpertForwardRef(get(e), xs)
    slots.forEach((s, i) => contrib.set(ys.subarray(i * D, i * D + D), s * D))
  }
  const out = new Float64Array(T * D)
  for (let t = 0; t < T; t++)
    for (let j = 0; j < routes.k; j++) {
      const w = routes.weights[t * routes.k + j]
      const o = (t * routes.k + j) * D
      for (let i = 0; i < D; i++) out[t * D + i] += w * contrib[o + i]
    }
  if (l.sharedExperts.length) {
    const shared = new Float64Array(T * D)
    for (let s = 0; s < l.sharedExperts.length; s++) {
      const ys = denseExpertForwardRef(get({ shared: s }), x)
      for (let i = 0; i < ys.length; i++) shared[i] += ys[i]
    }
    let scale: Float64Array | undefined
    if (l.sharedExpertGate) {
      const g = new Float32Array(model.view(l.sharedExpertGate))
      scale = matmulT(g, 1, D, Float64Array.from(x), T).map((v) => 1 / (1 + Math.exp(-v)))
    }
    for (let t = 0; t < T; t++) for (let i = 0; i < D; i++) out[t * D + i] += (scale ? scale[t] : 1) * shared[t * D + i]
  }
  return { out, routes }
}
