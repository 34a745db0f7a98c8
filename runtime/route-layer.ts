// Routing one layer's batch into a selection in the arena (scheduler/selection.ts has the layout),
// with the layer's router built once per model and reused, so steady-state routing allocates nothing.
import type { Lease } from './arena.js'
import { HetmoeError } from './errors.js'
import { RreRouter } from '../scheduler/route-rre.js'
import { GateRouter } from '../scheduler/route-gate.js'
import { selectionBytes, selectionViews } from '../scheduler/selection.js'
import type { ModelFile } from '../scheduler/model-file.js'
import type { GateRouting } from '../experts/manifest.js'
import { native } from './native.js'
import { crewOf, gateParallelMinProducts } from './cpu-crew.js'

export interface Selection {
  counts: Int32Array
  offsets: Int32Array
  /** Byte offsets into the arena of the int32 tokenRows / outRows arrays and of f32 scales. */
  tokenRowsOffset: number
  outRowsOffset: number
  /** Absent for RRE (every weight is 1). */
  scalesOffset?: number
}

/** What routing reads of a model: its manifest and routing blobs (a loaded Model, or the scheduler's
 *  ModelFile, which reads no expert weights); `weightsId` (a mapped Model) lets large gate GEMMs be
 *  shared with the runtime's CPU crew. */
export type RoutingModel = Pick<ModelFile, 'manifest' | 'rreTable' | 'gateWeight'> & { readonly weightsId?: number }

const routers = new WeakMap<RoutingModel, (RreRouter | GateRouter | undefined)[]>()

function routerOf(model: RoutingModel, layer: number): RreRouter | GateRouter {
  let perLayer = routers.get(model)
  if (!perLayer) routers.set(model, (perLayer = []))
  let r = perLayer[layer]
  if (!r) {
    const m = model.manifest
    const l = m.layers[layer]
    r =
      l.routing.kind === 'rre'
        ? new RreRouter(l.routing, model.rreTable(layer), m.vocabSize, l.experts.length)
        : new GateRouter({ weight: model.gateWeight(layer), numExperts: l.experts.length, hiddenSize: m.hiddenSize, topK: l.routing.topK, normalize: l.routing.normalize })
    perLayer[layer] = r
  }
  return r
}

/** Tokens per expert that `tokenIds` will route to in an RRE layer (lookahead: no hidden states
 *  needed); undefined for a gated layer. Throws as routing would on bad ids or an unknown domain. */
export function rreCounts(model: RoutingModel, layer: number, tokenIds: Int32Array, domain: string | number): Int32Array | undefined {
  const router = routerOf(model, layer)
  if (!(router instanceof RreRouter)) return undefined
  const counts = new Int32Array(router.numExperts)
  router.countInto(tokenIds, domain, counts)
  return counts
}

/** BAD_INPUT naming hidden[i], the first NaN/Inf (native scan: at D = 4096 a JavaScript loop cost 100 µs). */
function notFinite(h: Float32Array, i: number, D: number): HetmoeError {
  const row = Math.floor(i / D)
  return new HetmoeError('BAD_INPUT', `hidden state row ${row} (column ${i - row * D}) is ${h[i]}; hetmoe needs finite values`)
}

/** native gateLogits / gateJobRun: the hidden states are finite and the layer's gate weights are not. */
const GATE_WEIGHT_NOT_FINITE = -3

/** Gate selections of at least this many logits (and unrenormalised weights) are made natively. */
const NATIVE_SELECT_MIN_LOGITS = 64

// Gate logits scratch, grown to the largest batch × experts seen.
let logitsScratch: Float64Array = new Float64Array(0)

export function routeLayer(
  model: RoutingModel,
  layer: number,
  hidden: Float32Array,
  T: number,
  options: { tokenIds?: Int32Array; domain?: string | number },
  lease: (bytes: number) => Lease,
): Selection {
  const router = routerOf(model, layer)
  const E = router.numExperts
  const K = router instanceof GateRouter ? router.topK : 1
  const l = lease(selectionBytes(E, T * K))
  const sel = selectionViews(l.arena.buffer, l.offset, E, T * K)
  if (router instanceof RreRouter) {
    const ids = options.tokenIds
    if (!(ids instanceof Int32Array) || ids.length !== T)
      throw new HetmoeError('BAD_INPUT', `layer ${layer} is routed by token id (RRE): options.tokenIds must be an Int32Array of ${T} ids (got ${ids ? `${ids.constructor.name}(${ids.length})` : 'none'})`)
    if (options.domain === undefined) throw new HetmoeError('BAD_INPUT', `layer ${layer} is RRE-routed: options.domain is required (${router.domains.map((d) => d.name).join(', ')})`)
    const bad = native().firstNonFinite(hidden, T * model.manifest.hiddenSize)
    if (bad >= 0) throw notFinite(hidden, bad, model.manifest.hiddenSize)
    router.route(ids, options.domain, sel)
  } else {
    // The gate GEMM natively, the same bits as router.route(hidden, T, sel) (test/router-math.test.ts):
    // large ones shared with the runtime's idle CPU crew, others on this thread.
    const D = model.manifest.hiddenSize
    const shared = model.weightsId !== undefined ? crewOf(l.arena) : undefined
    const crew = shared && T * E * D >= gateParallelMinProducts(shared.threads) ? shared : undefined
    let logits = logitsScratch
    let bad: number | undefined
    if (crew) {
      const routing = model.manifest.layers[layer].routing as GateRouting
      const out = lease(T * E * 8)
      logits = out.f64(T * E)
      bad = crew.gateLogits(hidden, { weightsId: model.weightsId!, offset: routing.weight.offset }, T, D, E, logits)
    }
    if (bad === undefined) {
      if (logitsScratch.length < T * E) logitsScratch = new Float64Array(T * E)
      logits = logitsScratch
      bad = native().gateLogits(hidden, router.weight, T, D, E, logits)
    }
    if (bad === GATE_WEIGHT_NOT_FINITE)
      throw new HetmoeError('BAD_MODEL', `layer ${layer}'s gate weights hold a NaN or ±Inf (the model file is damaged): import or synthesise the model again`)
    if (bad >= 0) throw notFinite(hidden, bad, D)
    // The top-k and weights: the same bits either way (native/cpu/gate_select.h). Natively where a
    // softmax over every expert is needed (weights not renormalised), its exps in vector lanes: a
    // 64-expert gate took 18-27 µs in JavaScript at 16 tokens, 6-9 natively, and 1.4 against 0.9 at
    // one token (dev VM, AVX-512); smaller or renormalised selections are faster in JavaScript than
    // the native call's ten arguments (0.2 against 0.55 µs at 1 × 8).
    if (!router.normalize && T * E >= NATIVE_SELECT_MIN_LOGITS) native().gateSelect(logits, T, E, K, false, sel.counts, sel.offsets, sel.tokenRows, sel.outRows, sel.scales)
    else router.routeLogits(logits, T, sel)
  }
  const base = sel.tokenRows.byteOffset
  return {
    counts: sel.counts,
    offsets: sel.offsets,
    tokenRowsOffset: base,
    outRowsOffset: sel.outRows.byteOffset,
    scalesOffset: router instanceof GateRouter ? sel.scales.byteOffset : undefined,
  }
}
