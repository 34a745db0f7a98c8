// What routing one layer's batch costs on this machine, measured on the model itself through the
// runtime's own routing (route-layer.ts): the planner's predictions add it to every layer. It depends
// on the model (RRE table lookups, or a gate GEMM of T × E × D) and the batch, not on the placement,
// so no calibration constant stands in for it; at decode on sigma-lite it is ~10% of a layer.
import { Arena } from './arena.js'
import { routeLayer, type RoutingModel } from './route-layer.js'
import { fillRepeating, randomHidden, residualAdd, uniformTokens } from './token-stream.js'
import { selectionBytes } from '../scheduler/selection.js'
import { native } from './native.js'

/** Wall time spent measuring one batch size without idle gaps, roughly (at least 3 timed runs a layer). */
const BUDGET_S = 0.05
/** The layer's own time (ms) in the idle gap before each timed call of a batch whose finiteness scan
 *  goes to the thread pool, where the caller does not know it (measureRouteS's gapS). */
const IDLE_GAP_MS = 1
/** Bounds of the whole idle gap, that time and a residual add's, ms. */
const MIN_GAP_MS = 0.2
const MAX_GAP_MS = 10
/** Timed calls a layer at most when each waits out the gap, and at least in all (over the layers). */
const GAP_RUNS = 6
const MIN_GAP_SAMPLES = 4
/** Seconds of idle gaps to spend at most beyond MIN_GAP_SAMPLES (place must stay well under 1 s). */
const GAP_BUDGET_S = 0.06

/**
 * Mean seconds routing a batch of `tokens` random hidden states (random token ids, `domain` or the
 * first for RRE) takes, over the model's layers; the first call of each layer is not timed. Gated
 * layers are measured on this thread alone (a runtime shares gate GEMMs of ≥ 1M products with its
 * idle CPU workers, so at prefill sizes this is an upper bound).
 * Batches large enough for the finiteness scan's thread pool (native scanPoolMinFloats: from 256
 * rows at D = 2048) are timed as a runtime routes them: after the layer's expert work, `gapS` (the
 * layer's predicted time; 1 ms when not given), with the pool's threads asleep, and on hidden states
 * this thread has just written (the app's residual add). Back to back on states written once, `place`
 * predicted 0.03 ms of routing at 256 tokens and 0.29 at 4096 where sigma-lite's runtime spent
 * 0.16-0.21 and 0.65-0.78 (H100 machine's Xeon, 63360ce). On the H200 machine's Xeon (4bbdf9b,
 * bench/route-probe.ts) the scan at 4096 rows took 0.14 ms after 1 ms idle, 0.16 after 3 ms, 0.23 on
 * freshly written states; the runtime routed in 0.45-0.62 beside a CPU job, 0.47-0.57 again. Written
 * before the idle gap and as a median, `place` still said 0.51 at 4096 and 0.09 at 256 where the
 * runtime's means were 0.70-0.95 and 0.18-0.25 (call 14, 7a98a12). The pool's threads sleep from one
 * route to the next, through the layer's expert work and the app's work between layers, and the longer
 * they sleep the slower they wake: on the dev VM routing 4096 rows took 0.96 ms after 1 ms idle, 1.21
 * after 5 and 1.37 after 15. The idle gap is therefore `gapS` plus what the app's least work between
 * layers, a residual add over the batch's rows in JavaScript, takes on this machine (timed here).
 */
export function measureRouteS(model: RoutingModel, tokens: number, domain: string | number = 0, gapS?: number): number {
  const m = model.manifest
  const D = m.hiddenSize
  const rows = Math.max(...m.layers.map((l) => tokens * (l.routing.kind === 'gate' ? l.routing.topK : 1)))
  const E = Math.max(...m.layers.map((l) => l.experts.length))
  const poolMin = native().scanPoolMinFloats()
  const idle = poolMin > 0 && tokens * D >= poolMin
  const arena = new Arena({ bytes: (idle ? 2 : 1) * tokens * D * 4 + 2 * (selectionBytes(E, rows) + tokens * E * 8) + (1 << 20) })
  try {
    const h = arena.lease(tokens * D * 4)
    // 64 random rows, repeated: what routing costs does not depend on the values (generating 4096
    // rows of 2048 in JavaScript took longer than measuring).
    const block = randomHidden(Math.min(tokens, 64), D, 11)
    const hv = h.f32(tokens * D)
    // With ordinary stores, as a residual add writes them (fillRepeating: one TypedArray.set of the
    // batch streams past the caches, and the scan's threads then read the rows unlike an app's).
    const write = () => fillRepeating(hv, block)
    write()
    const options = { tokenIds: uniformTokens(tokens, m.vocabSize, 11), domain }
    const samples: number[] = []
    const once = (layer: number): number => {
      const leases: ReturnType<Arena['lease']>[] = []
      const t0 = performance.now()
      routeLayer(model, layer, h.f32(tokens * D), tokens, options, (bytes) => {
        const l = arena.lease(bytes)
        leases.push(l)
        return l
      })
      const s = (performance.now() - t0) / 1000
      for (const l of leases) l.release()
      return s
    }
    // Untimed calls first, over every layer, as a running runtime's routing is warm (compiled, caches
    // filled): in a fresh process the first ~100 calls ran at 2-3x the steady time, and warming one
    // layer just before timing it still left its first samples slow (place predicted 72 µs a layer
    // at 16 tokens on the Xeon where the runtime then routed in 22-34).
    const L = m.layers.length
    let last = 0
    for (let i = 0, t0 = performance.now(); i < 200 * L && (i < 2 * L || performance.now() - t0 < 500 * BUDGET_S); i++) last = once(i % L)
    const sleeper = idle ? new Int32Array(new SharedArrayBuffer(4)) : undefined
    // (A NaN timeout would make Atomics.wait wait for ever.)
    const layerMs = gapS === undefined || Number.isNaN(gapS) ? IDLE_GAP_MS : Math.max(0, 1e3 * gapS)
    const gapMs = idle ? Math.min(MAX_GAP_MS, Math.max(MIN_GAP_MS, layerMs + residualAddMs(hv, arena.lease(tokens * D * 4).f32(tokens * D), block))) : 0
    const fit = Math.floor((idle ? GAP_BUDGET_S / (gapMs / 1e3) : BUDGET_S / 2 / Math.max(last, 1e-6)) / L)
    const runs = Math.max(idle ? Math.ceil(MIN_GAP_SAMPLES / L) : 3, Math.min(idle ? GAP_RUNS : 100, fit))
    for (let i = 0; i < runs; i++)
      for (let layer = 0; layer < L; layer++) {
        if (sleeper) {
          // In a runtime's order: the layer's expert work (the pool's threads asleep), the app's
          // residual add, routing straight after it on the rows it has just written.
          Atomics.wait(sleeper, 0, 0, gapMs)
          write()
        }
        samples.push(once(layer))
      }
    // The mean, not the median: throughput pays for every call, the slow ones too (a helper thread
    // that wakes late, a collection), and the runtime's per-layer figures are means.
    return samples.reduce((s, x) => s + x, 0) / samples.length
  } finally {
    arena.close()
  }
}

/** Milliseconds an app's residual add over `h` (h += out, in JavaScript) takes here: the second of two
 *  passes (the first compiles the loop). It leaves `h` as it was, to within 1e-30 of `out`'s scale. */
function residualAddMs(h: Float32Array, out: Float32Array, block: Float32Array): number {
  fillRepeating(out, block)
  let ms = 0
  for (let pass = 0; pass < 2; pass++) {
    const t0 = performance.now()
    residualAdd(h, out, 1e-30)
    ms = performance.now() - t0
  }
  return ms
}
