// A placement for a model, a load profile and a GPU budget, with the figures an operator needs:
// what `hetmoe place` prints and writes. Predictions cover the MoE layers as forward() runs them:
// routing (when measured, PlanOptions.routeS) and the experts; not the model's attention or embeddings.
import type { ModelManifest } from '../experts/manifest.js'
import { CostModel, expertShape, type ExpertShape } from './cost-model.js'
import { layerModels, planPlacement, predictBatchTime, type PlacementProblem } from './planner.js'
import { profileShares, type LoadProfile } from './profile.js'
import { planStreaming } from './streaming.js'

export interface PlanDocument {
  format: 'hetmoe-plan'
  version: 1
  model: string
  budgetBytes: number
  /** Bytes of the resident experts (≤ budgetBytes − streamBytes). */
  gpuBytes: number
  /** GPU bytes kept free for weights streamed per batch (prefill). */
  streamBytes: number
  /** Share of routed rows, over all layers, that resident experts serve. */
  gpuTokenShare: number
  /** Tokens per forward the placement was optimised for. */
  batchTokens: number
  /** True when the planner provably found the optimum of its cost model. */
  exact: boolean
  /** [layer][expert] share of tokens routed to each expert that the plan assumed (the profile's): a
   *  runtime given the plan measures re-placement drift from it. */
  share: number[][]
  layers: {
    layer: number
    gpuExperts: number[]
    gpuBytes: number
    gpuTokenShare: number
    /** Expected milliseconds per batch of batchTokens: routing, each side's work (its overhead
     *  included), and the layer (routing, then the sides overlapping); comparable with `hetmoe run`'s
     *  per-layer times. */
    predictedMs: { route: number; cpu: number; gpu: number; layer: number }
  }[]
  predicted: {
    /** Tokens/s of decode steps carrying `batchTokens` tokens each, MoE layers only. */
    decodeTokensPerS: number
    /** Tokens/s of a prefill batch of `prefillTokens`, streaming cold experts where that pays. */
    prefillTokensPerS: number
    prefillTokens: number
    /** The same two with every expert on the CPU, for comparison. */
    cpuOnlyDecodeTokensPerS: number
    cpuOnlyPrefillTokensPerS: number
    /** Routing one layer's batch, as measured on this machine (0: not measured): at batchTokens and
     *  at prefillTokens, µs. */
    routeUs: { batch: number; prefill: number }
  }
  profile: { source: string; tokens: number }
  calibration: { source: string; machine: string }
}

export interface PlanOptions {
  budgetBytes: number
  batchTokens: number
  /** Defaults to 4096. */
  prefillTokens?: number
  /** GPU bytes reserved for streaming. By default the planner weighs two choices at `batchTokens`:
   *  none, or two of the largest experts (double buffering, when the budget holds at least eight),
   *  and keeps the one predicted faster — at decode, reserving only leaves experts on the CPU. */
  streamBytes?: number
  /** Seconds routing one layer's batch takes at batchTokens and at prefillTokens (runtime/route-cost.ts
   *  measures it on the model); added to every layer. Default 0. */
  routeS?: { batch: number; prefill: number }
}

export function modelShapes(m: ModelManifest): ExpertShape[][] {
  return m.layers.map((l) => l.experts.map(expertShape))
}

export function defaultStreamBytes(shapes: ExpertShape[][], budgetBytes: number): number {
  const largest = Math.max(0, ...shapes.flat().map((s) => s.bytes))
  return budgetBytes >= 8 * largest ? 2 * largest : 0
}

export function makePlan(model: ModelManifest, profile: LoadProfile, cost: CostModel, options: PlanOptions): PlanDocument {
  const plan = planWithoutRouting(model, profile, cost, options)
  return options.routeS ? withRouting(plan, options.routeS) : plan
}

/**
 * The plan with `routeS` (seconds a layer, at the plan's batch and prefill sizes) added to every
 * layer's predictions: routing costs every placement the same, so the placement stays and only the
 * times grow (place measures routing after a first plan, whose layer times set the idle gap it is
 * timed after, without running the planner twice). Replaces any routing the plan had.
 */
export function withRouting(plan: PlanDocument, routeS: { batch: number; prefill: number }): PlanDocument {
  const p = plan.predicted
  const L = plan.layers.length
  const old = { batch: p.routeUs.batch / 1e6, prefill: p.routeUs.prefill / 1e6 }
  const rate = (tokensPerS: number, tokens: number, from: number, to: number) => tokens / (tokens / tokensPerS + L * (to - from))
  return {
    ...plan,
    layers: plan.layers.map((l) => ({ ...l, predictedMs: { ...l.predictedMs, route: 1e3 * routeS.batch, layer: l.predictedMs.layer + 1e3 * (routeS.batch - old.batch) } })),
    predicted: {
      ...p,
      decodeTokensPerS: rate(p.decodeTokensPerS, plan.batchTokens, old.batch, routeS.batch),
      prefillTokensPerS: rate(p.prefillTokensPerS, p.prefillTokens, old.prefill, routeS.prefill),
      cpuOnlyDecodeTokensPerS: rate(p.cpuOnlyDecodeTokensPerS, plan.batchTokens, old.batch, routeS.batch),
      cpuOnlyPrefillTokensPerS: rate(p.cpuOnlyPrefillTokensPerS, p.prefillTokens, old.prefill, routeS.prefill),
      routeUs: { batch: 1e6 * routeS.batch, prefill: 1e6 * routeS.prefill },
    },
  }
}

function planWithoutRouting(model: ModelManifest, profile: LoadProfile, cost: CostModel, options: PlanOptions): PlanDocument {
  const experts = modelShapes(model)
  const share = profileShares(profile)
  const prefillTokens = options.prefillTokens ?? 4096
  // Per layer, planStreaming's plan for a batch (each expert's count from its token share), summed over
  // layers: the batch seconds with cold experts streamed into `streamBytes`, and what that saves.
  const streamed = (resident: number[][], tokens: number, count: (share: number) => number, streamBytes: number) =>
    experts.reduce(
      (s, ex, l) => {
        const on = new Set(resident[l])
        const r = planStreaming(ex, Array.from(share[l], count), (e) => on.has(e), cost, streamBytes, tokens)
        return { layerS: s.layerS + r.layerS, gainS: s.gainS + (r.withoutS - r.layerS) }
      },
      { layerS: 0, gainS: 0 },
    )
  const candidates = !cost.hasGpu ? [0] : options.streamBytes !== undefined ? [Math.min(options.streamBytes, options.budgetBytes)] : [...new Set([0, defaultStreamBytes(experts, options.budgetBytes)])]
  // The planner's batch time (it models which experts a batch of this size activates) less what
  // streaming saves at this batch size, estimated on the whole tokens each expert expects
  // (⌊share × tokens⌋: at decode no expert expects a whole token, and nothing is worth streaming).
  const choices = candidates.map((streamBytes) => {
    const problem: PlacementProblem = { experts, share, batchTokens: options.batchTokens, budgetBytes: options.budgetBytes - streamBytes, cost }
    const placement = planPlacement(problem)
    const sets = placement.layers.map((l) => l.gpuExperts)
    return { streamBytes, problem, placement, sets, batchS: placement.predictedBatchS - streamed(sets, options.batchTokens, (p) => Math.floor(p * options.batchTokens), streamBytes).gainS }
  })
  const { streamBytes, problem, placement, sets, batchS: chosenBatchS } = choices.reduce((a, b) => (b.batchS < a.batchS ? b : a))
  const prefillS = (resident: number[][]) => streamed(resident, prefillTokens, (p) => p * prefillTokens, streamBytes).layerS
  const none = experts.map(() => [] as number[])
  const cpuOnlyDecodeS = predictBatchTime(problem, none)
  const decodeS = chosenBatchS
  const total = share.reduce((s, l) => s + l.reduce((a, b) => a + b, 0), 0)
  const models = layerModels(problem)
  const layers = placement.layers.map((l) => {
    const served = l.gpuExperts.reduce((s, e) => s + share[l.layer][e], 0)
    const all = share[l.layer].reduce((a, b) => a + b, 0)
    const on = new Set(l.gpuExperts)
    const side = models[l.layer].sides((e) => on.has(e))
    const predictedMs = { route: 0, cpu: 1e3 * side.cpuS, gpu: 1e3 * side.gpuS, layer: 1e3 * models[l.layer].timeOf((e) => on.has(e)) }
    return { layer: l.layer, gpuExperts: l.gpuExperts, gpuBytes: l.gpuBytes, gpuTokenShare: all > 0 ? served / all : 0, predictedMs, served }
  })
  return {
    format: 'hetmoe-plan',
    version: 1,
    model: model.name,
    budgetBytes: options.budgetBytes,
    gpuBytes: placement.gpuBytes,
    streamBytes,
    gpuTokenShare: total > 0 ? layers.reduce((s, l) => s + l.served, 0) / total : 0,
    batchTokens: options.batchTokens,
    exact: placement.exact,
    share: share.map((s) => Array.from(s)),
    layers: layers.map(({ served: _, ...l }) => l),
    predicted: {
      decodeTokensPerS: options.batchTokens / decodeS,
      prefillTokensPerS: prefillTokens / prefillS(sets),
      prefillTokens,
      cpuOnlyDecodeTokensPerS: options.batchTokens / cpuOnlyDecodeS,
      cpuOnlyPrefillTokensPerS: prefillTokens / prefillS(none),
      routeUs: { batch: 0, prefill: 0 },
    },
    profile: { source: profile.source, tokens: profile.tokens },
    calibration: { source: cost.calibration.source, machine: `${cost.calibration.machine.cpu}${cost.calibration.machine.gpu ? ` + ${cost.calibration.machine.gpu}` : ''}` },
  }
}
