// The placement planner: which experts of every layer live on the GPU, within a byte budget, so that
// the predicted batch time — Σ over layers of the concurrent CPU/GPU layer time (layer-time.ts) — is
// smallest. Most-popular-first is not enough: a GPU that already carries the slower side of a layer
// gains nothing from one more expert there, while the same bytes may halve another layer's CPU part.
//
// Method:
//   1. Per layer, a frontier of (bytes, time) pairs, each the best time reachable with that many bytes.
//      Exact when the layer has ≤ exactLimit active experts (all subsets, walked in Gray-code order
//      so each step updates four sums); otherwise a greedy chain adding the expert with the best time
//      saved per byte.
//   2. Layers share only the budget: merge the frontiers (multiple-choice knapsack over Pareto sets,
//      exact), keeping the best total time within the budget.
//   3. When step 1 was not exact for some layer, a local search over single adds, drops and swaps.
// Experts nobody routes to never take GPU bytes.
import { badOption } from '../runtime/errors.js'
import type { CostModel, ExpertShape } from './cost-model.js'
import { LayerTimeModel } from './layer-time.js'

export interface PlacementProblem {
  /** [layer][expert] shapes (bytes and FLOPs by format). */
  experts: readonly (readonly ExpertShape[])[]
  /** [layer][expert] probability that a token is routed to the expert (sums to top-k per layer). */
  share: readonly ArrayLike<number>[]
  /** Tokens per forward the placement is optimised for (1 = single-stream decode). */
  batchTokens: number
  budgetBytes: number
  cost: CostModel
}

export interface LayerPlacement {
  layer: number
  /** Resident experts, ascending. */
  gpuExperts: number[]
  gpuBytes: number
}

export interface Placement {
  budgetBytes: number
  gpuBytes: number
  layers: LayerPlacement[]
  /** Predicted seconds per batch of problem.batchTokens tokens. */
  predictedBatchS: number
  /** True when the search provably found the minimum of the model. */
  exact: boolean
}

export interface PlannerOptions {
  /** Layers with at most this many active experts are solved exactly (2^n subsets). Defaults to 16. */
  exactLimit?: number
}

interface Frontier {
  bytes: Float64Array
  time: Float64Array
  sets: number[][]
}

export function layerModels(p: PlacementProblem): LayerTimeModel[] {
  return p.experts.map((ex, l) => new LayerTimeModel(ex, p.share[l], p.batchTokens, p.cost))
}

/** Predicted seconds per batch for given resident sets ([layer] → expert ids). */
export function predictBatchTime(p: PlacementProblem, gpuExperts: readonly (readonly number[])[], models = layerModels(p)): number {
  return models.reduce((s, m, l) => {
    const on = new Set(gpuExperts[l] ?? [])
    return s + m.timeOf((e) => on.has(e))
  }, 0)
}

export function planPlacement(p: PlacementProblem, options: PlannerOptions = {}): Placement {
  checkProblem(p)
  const exactLimit = options.exactLimit ?? 16
  const models = layerModels(p)
  const budget = Math.max(0, p.budgetBytes)
  let exact = true
  const frontiers = models.map((m) => {
    const active = activeExperts(m, budget)
    if (!p.cost.hasGpu || active.length === 0) return single(m)
    if (active.length <= exactLimit) return exactFrontier(m, active)
    exact = false
    return greedyFrontier(m, active)
  })
  const merged = mergeFrontiers(frontiers, budget)
  exact &&= merged.exact
  const sets = merged.picks.map((i, l) => frontiers[l].sets[i].slice())
  if (!exact) improve(models, sets, budget)
  return placementOf(p, models, sets, exact)
}

function checkProblem(p: PlacementProblem): void {
  if (!(p.budgetBytes >= 0)) throw badOption('budgetBytes', 'a non-negative number of bytes', p.budgetBytes)
  if (!Number.isInteger(p.batchTokens) || p.batchTokens < 1) throw badOption('batchTokens', 'a positive integer', p.batchTokens)
  if (p.share.length !== p.experts.length) throw badOption('share', `one entry per layer (${p.experts.length})`, `${p.share.length} entries`)
  p.experts.forEach((ex, l) => {
    if (p.share[l].length !== ex.length) throw badOption(`share[${l}]`, `one entry per expert (${ex.length})`, `${p.share[l].length} entries`)
    for (let e = 0; e < ex.length; e++)
      if (!(p.share[l][e] >= 0) || !Number.isFinite(p.share[l][e])) throw badOption(`share[${l}][${e}]`, 'a finite probability ≥ 0', p.share[l][e])
  })
}

function placementOf(p: PlacementProblem, models: LayerTimeModel[], sets: number[][], exact: boolean): Placement {
  const layers = sets.map((s, l) => {
    const gpuExperts = [...s].sort((a, b) => a - b)
    return { layer: l, gpuExperts, gpuBytes: gpuExperts.reduce((b, e) => b + models[l].bytes[e], 0) }
  })
  return {
    budgetBytes: p.budgetBytes,
    gpuBytes: layers.reduce((s, l) => s + l.gpuBytes, 0),
    layers,
    predictedBatchS: predictBatchTime(p, sets, models),
    exact,
  }
}

function activeExperts(m: LayerTimeModel, budget: number): number[] {
  const out: number[] = []
  for (let e = 0; e < m.numExperts; e++) if (m.share[e] > 0 && m.bytes[e] <= budget && m.gpuS[e] < Infinity) out.push(e)
  return out
}

function single(m: LayerTimeModel): Frontier {
  return { bytes: Float64Array.of(0), time: Float64Array.of(m.timeOf(() => false)), sets: [[]] }
}

/** All 2^n subsets of the active experts, Gray-code order; keeps the Pareto points. */
function exactFrontier(m: LayerTimeModel, active: number[]): Frontier {
  const n = active.length
  const count = 2 ** n
  // Only the fastest subset of each byte total can be on the frontier: keep one per total (experts
  // of one format share a size, so there are few totals), then sort just those.
  const bestAt = new Map<number, number>() // bytes → index into the arrays below
  const bytes: number[] = []
  const time: number[] = []
  const masks: number[] = []
  const offer = (b: number, t: number, mask: number) => {
    const i = bestAt.get(b)
    if (i === undefined) {
      bestAt.set(b, bytes.length)
      bytes.push(b)
      time.push(t)
      masks.push(mask)
    } else if (t < time[i]) {
      time[i] = t
      masks[i] = mask
    }
  }
  let cs = 0, cp = 0
  for (let e = 0; e < m.numExperts; e++) {
    cs += m.cpuS[e]
    cp += m.share[e]
  }
  let gs = 0, gp = 0, b = 0, mask = 0
  offer(0, m.time(cs, gs, cp, gp), 0)
  for (let i = 1; i < count; i++) {
    const bit = 31 - Math.clz32(i & -i)
    const e = active[bit]
    const sign = mask & (1 << bit) ? -1 : 1
    mask ^= 1 << bit
    cs -= sign * m.cpuS[e]
    cp -= sign * m.share[e]
    gs += sign * m.gpuS[e]
    gp += sign * m.share[e]
    b += sign * m.bytes[e]
    offer(b, m.time(cs, gs, cp, gp), mask)
  }
  const order = Array.from(bytes.keys()).sort((x, y) => bytes[x] - bytes[y] || time[x] - time[y])
  return pareto(order, bytes, time, (i) => active.filter((_, k) => masks[i] & (1 << k)))
}

/**
 * Heuristic frontier: the Pareto union of three greedy chains of nested sets, each adding one expert
 * at a time — by time saved per byte, by time saved, and by load. Each alone misses knapsack
 * combinations that another finds when expert sizes differ (mixed formats).
 */
function greedyFrontier(m: LayerTimeModel, active: number[]): Frontier {
  const bytes: number[] = []
  const time: number[] = []
  const sets: number[][] = []
  const scores: ((saved: number, e: number) => number)[] = [(saved, e) => saved / m.bytes[e], (saved) => saved, (_, e) => m.share[e]]
  for (const score of scores) {
    let cs = 0, cp = 0, gs = 0, gp = 0, b = 0
    for (let e = 0; e < m.numExperts; e++) {
      cs += m.cpuS[e]
      cp += m.share[e]
    }
    let now = m.time(cs, gs, cp, gp)
    let set: number[] = []
    bytes.push(0)
    time.push(now)
    sets.push(set)
    const left = new Set(active)
    for (;;) {
      let best = -1
      let bestScore = -Infinity
      let bestTime = 0
      for (const e of left) {
        const t = m.time(cs - m.cpuS[e], gs + m.gpuS[e], cp - m.share[e], gp + m.share[e])
        const sc = score(now - t, e)
        if (t < now && sc > bestScore) {
          best = e
          bestScore = sc
          bestTime = t
        }
      }
      if (best < 0) break
      left.delete(best)
      cs -= m.cpuS[best]
      cp -= m.share[best]
      gs += m.gpuS[best]
      gp += m.share[best]
      b += m.bytes[best]
      now = bestTime
      set = [...set, best]
      bytes.push(b)
      time.push(now)
      sets.push(set)
    }
  }
  const order = Array.from(bytes.keys()).sort((x, y) => bytes[x] - bytes[y] || time[x] - time[y])
  return pareto(order, bytes, time, (i) => sets[i])
}

/** From points sorted by (bytes, time): those strictly faster than every cheaper one. */
function pareto(order: ArrayLike<number>, bytes: ArrayLike<number>, time: ArrayLike<number>, setOf: (i: number) => number[]): Frontier {
  const keep: number[] = []
  let bestTime = Infinity
  for (let k = 0; k < order.length; k++) {
    const i = order[k]
    if (time[i] < bestTime) {
      keep.push(i)
      bestTime = time[i]
    }
  }
  return { bytes: Float64Array.from(keep, (i) => bytes[i]), time: Float64Array.from(keep, (i) => time[i]), sets: keep.map(setOf) }
}

const MERGE_CAP = 20_000

/**
 * Combines per-layer frontiers into the best total time within the budget: a Pareto set over
 * (total bytes, total time) grown layer by layer, remembering each point's choice per layer.
 * Exact unless a set outgrows MERGE_CAP points, when it is thinned evenly by bytes.
 */
function mergeFrontiers(frontiers: Frontier[], budget: number): { picks: number[]; exact: boolean } {
  let exact = true
  // Each point: total bytes, total time, and the chain of picks (index into each layer's frontier).
  let bytes = [0]
  let time = [0]
  let picks: number[][] = [[]]
  for (const f of frontiers) {
    const nb: number[] = []
    const nt: number[] = []
    const from: [number, number][] = []
    for (let a = 0; a < bytes.length; a++)
      for (let j = 0; j < f.bytes.length; j++) {
        const b = bytes[a] + f.bytes[j]
        if (b > budget) break // frontier bytes ascend
        nb.push(b)
        nt.push(time[a] + f.time[j])
        from.push([a, j])
      }
    const order = Array.from(nb.keys()).sort((x, y) => nb[x] - nb[y] || nt[x] - nt[y])
    let keep: number[] = []
    let best = Infinity
    for (const i of order)
      if (nt[i] < best) {
        keep.push(i)
        best = nt[i]
      }
    if (keep.length > MERGE_CAP) {
      exact = false
      const step = keep.length / MERGE_CAP
      keep = Array.from({ length: MERGE_CAP }, (_, k) => keep[Math.floor(k * step)]).concat(keep[keep.length - 1])
    }
    picks = keep.map((i) => [...picks[from[i][0]], from[i][1]])
    bytes = keep.map((i) => nb[i])
    time = keep.map((i) => nt[i])
  }
  // The Pareto set's last point is the fastest within the budget.
  return { picks: picks[picks.length - 1], exact }
}

/** Local search: single adds, drops and swaps (within or across layers), best move first, while any improves. */
function improve(models: LayerTimeModel[], sets: number[][], budget: number): void {
  const L = models.length
  const on = sets.map((s, l) => {
    const u = new Uint8Array(models[l].numExperts)
    for (const e of s) u[e] = 1
    return u
  })
  // Per-layer sums, so that a move is evaluated in O(1) and without allocating.
  const cs = new Float64Array(L), gs = new Float64Array(L), cp = new Float64Array(L), gp = new Float64Array(L)
  const times = new Float64Array(L)
  const resum = (l: number) => {
    const m = models[l]
    cs[l] = gs[l] = cp[l] = gp[l] = 0
    for (let e = 0; e < m.numExperts; e++)
      if (on[l][e]) {
        gs[l] += m.gpuS[e]
        gp[l] += m.share[e]
      } else {
        cs[l] += m.cpuS[e]
        cp[l] += m.share[e]
      }
    times[l] = m.time(cs[l], gs[l], cp[l], gp[l])
  }
  for (let l = 0; l < L; l++) resum(l)
  const candidates = models.map((m) => [-1, ...[...Array(m.numExperts).keys()].filter((e) => m.share[e] > 0 && m.gpuS[e] < Infinity)])
  let used = sets.reduce((s, set, l) => s + set.reduce((b, e) => b + models[l].bytes[e], 0), 0)
  for (let pass = 0; pass < 200; pass++) {
    let bestGain = 0
    let bla = -1, ba = -1, blb = -1, bb = -1
    for (let la = 0; la < L; la++) {
      const ma = models[la]
      for (const a of candidates[la]) {
        if (a >= 0 && on[la][a] === 0) continue // a: a resident expert to drop, or −1 for none
        // Layer la after dropping a.
        const acs = a >= 0 ? cs[la] + ma.cpuS[a] : cs[la]
        const ags = a >= 0 ? gs[la] - ma.gpuS[a] : gs[la]
        const acp = a >= 0 ? cp[la] + ma.share[a] : cp[la]
        const agp = a >= 0 ? gp[la] - ma.share[a] : gp[la]
        const freed = a >= 0 ? ma.bytes[a] : 0
        const dropTime = a >= 0 ? ma.time(acs, ags, acp, agp) : times[la]
        for (let lb = 0; lb < L; lb++) {
          if (a < 0 && lb !== la) continue // a lone add is tried once, from its own layer
          const mb = models[lb]
          for (const b of candidates[lb]) {
            if (b >= 0 && on[lb][b] === 1) continue
            if (a < 0 && b < 0) continue
            if (used - freed + (b >= 0 ? mb.bytes[b] : 0) > budget) continue
            let gain: number
            if (b < 0) gain = times[la] - dropTime
            else if (lb === la)
              gain = times[la] - ma.time(acs - ma.cpuS[b], ags + ma.gpuS[b], acp - ma.share[b], agp + ma.share[b])
            else
              gain = times[la] - dropTime + times[lb] - mb.time(cs[lb] - mb.cpuS[b], gs[lb] + mb.gpuS[b], cp[lb] - mb.share[b], gp[lb] + mb.share[b])
            if (gain > bestGain && gain > 1e-12 * (times[la] + times[lb])) {
              bestGain = gain
              bla = la
              ba = a
              blb = lb
              bb = b
            }
          }
        }
      }
    }
    if (bla < 0) break
    if (ba >= 0) {
      on[bla][ba] = 0
      used -= models[bla].bytes[ba]
    }
    if (bb >= 0) {
      on[blb][bb] = 1
      used += models[blb].bytes[bb]
    }
    resum(bla)
    if (blb !== bla) resum(blb)
  }
  for (let l = 0; l < L; l++) sets[l] = [...on[l].keys()].filter((e) => on[l][e] === 1)
}
