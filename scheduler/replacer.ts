// Re-placement: the plan assumed a load; traffic drifts. The Replacer keeps an exponentially
// weighted moving average of each layer's observed load and, once it has drifted far enough from the
// load the current placement was planned for, proposes a new placement as moves (evict X, upload Y)
// for the runtime to apply in the background. It proposes only when the predicted gain is worth the
// copies, so small wobbles never make the GPU cache thrash.
import type { CostModel, ExpertShape } from './cost-model.js'
import { planPlacement, predictBatchTime, type Placement, type PlacementProblem } from './planner.js'

export interface ReplacerOptions {
  experts: readonly (readonly ExpertShape[])[]
  cost: CostModel
  budgetBytes: number
  batchTokens: number
  /** The placement in force and the per-layer token shares it was planned for. */
  placement: Placement
  assumedShare: readonly ArrayLike<number>[]
  /** Tokens after which an observation's weight halves. Defaults to 4096. */
  halfLifeTokens?: number
  /** Drift (total-variation distance per routed row, worst layer) that triggers a re-plan. Defaults to 0.1. */
  driftThreshold?: number
  /** Fraction of predicted batch time a new plan must save to be proposed. Defaults to 0.02. */
  minGain?: number
  /** Tokens to observe after a (re)plan before proposing. Defaults to halfLifeTokens. */
  warmupTokens?: number
}

export interface LayerMoves {
  layer: number
  evict: number[]
  upload: number[]
}

export interface Proposal {
  placement: Placement
  moves: LayerMoves[]
  drift: number
  /** Predicted seconds per batch under the observed load: current placement, then proposed. */
  currentS: number
  proposedS: number
  /** The observed shares the proposal was planned for (pass to accept). */
  share: Float64Array[]
}

export class Replacer {
  readonly #o: Required<Omit<ReplacerOptions, 'placement' | 'assumedShare'>>
  #placement: Placement
  #assumed: Float64Array[]
  readonly #observed: Float64Array[]
  /** Tokens observed per layer since the placement in force was accepted. */
  readonly #sinceAccept: Float64Array

  constructor(options: ReplacerOptions) {
    const half = options.halfLifeTokens ?? 4096
    this.#o = {
      experts: options.experts, cost: options.cost, budgetBytes: options.budgetBytes, batchTokens: options.batchTokens,
      halfLifeTokens: half, driftThreshold: options.driftThreshold ?? 0.1, minGain: options.minGain ?? 0.02,
      warmupTokens: options.warmupTokens ?? half,
    }
    this.#placement = options.placement
    this.#assumed = options.assumedShare.map((s) => Float64Array.from(s))
    this.#observed = this.#assumed.map((s) => Float64Array.from(s))
    this.#sinceAccept = new Float64Array(this.#assumed.length)
  }

  get placement(): Placement {
    return this.#placement
  }

  /** The EWMA of observed per-token shares, per layer. */
  get observedShare(): readonly Float64Array[] {
    return this.#observed
  }

  /** One routed batch of `tokens` tokens in `layer`: counts[e] rows went to expert e. Allocation-free. */
  observe(layer: number, counts: ArrayLike<number>, tokens: number): void {
    if (tokens <= 0) return
    const s = this.#observed[layer]
    const alpha = 1 - Math.pow(0.5, tokens / this.#o.halfLifeTokens)
    for (let e = 0; e < s.length; e++) s[e] += alpha * (counts[e] / tokens - s[e])
    this.#sinceAccept[layer] += tokens
  }

  /** Worst layer's total-variation distance between observed and assumed shares, per routed row. */
  drift(): number {
    return this.#driftFrom(this.#observed)
  }

  #driftFrom(observed: readonly ArrayLike<number>[]): number {
    let worst = 0
    for (let l = 0; l < observed.length; l++) {
      const o = observed[l]
      const a = this.#assumed[l]
      let d = 0
      let k = 0
      for (let e = 0; e < o.length; e++) {
        d += Math.abs(o[e] - a[e])
        k += a[e]
      }
      worst = Math.max(worst, d / 2 / Math.max(k, 1e-12))
    }
    return worst
  }

  /** A new placement and the moves to reach it, or null when the current one is still good enough. */
  propose(): Proposal | null {
    const problem = this.due()
    return problem && this.conclude(problem, planPlacement(problem))
  }

  /** The placement problem under the observed load when a re-plan is due (warmed up, drifted past the
   *  threshold), else null. Solve it (planPlacement, here or on another thread), then conclude(). */
  due(): PlacementProblem | null {
    if (Math.max(...this.#sinceAccept) < this.#o.warmupTokens) return null
    if (this.drift() < this.#o.driftThreshold) return null
    const share = this.#observed.map((s) => Float64Array.from(s))
    return { experts: this.#o.experts, share, batchTokens: this.#o.batchTokens, budgetBytes: this.#o.budgetBytes, cost: this.#o.cost }
  }

  /** The proposal from a problem due() gave and its solved placement, or null when the gain is too small. */
  conclude(problem: PlacementProblem, placement: Placement): Proposal | null {
    const share = problem.share.map((s) => Float64Array.from(s))
    const drift = this.#driftFrom(share)
    const currentS = predictBatchTime(problem, this.#placement.layers.map((l) => l.gpuExperts))
    const proposedS = placement.predictedBatchS
    if (currentS - proposedS < this.#o.minGain * currentS) {
      // The placement in force is (nearly) as good for this load: treat the load as assumed, so that
      // drift is measured from here and the same re-plan is not repeated on every call.
      this.#assumed = share
      return null
    }
    const moves = placement.layers.map((l, i) => {
      const now = new Set(this.#placement.layers[i]?.gpuExperts ?? [])
      const next = new Set(l.gpuExperts)
      return { layer: l.layer, evict: [...now].filter((e) => !next.has(e)).sort((a, b) => a - b), upload: l.gpuExperts.filter((e) => !now.has(e)) }
    })
    return { placement, moves, drift, currentS, proposedS, share }
  }

  /**
   * The runtime applied `p` (evictions first, then uploads, so the budget holds throughout): it becomes
   * the placement in force.
   */
  accept(p: Proposal): void {
    this.#placement = p.placement
    this.#assumed = p.share.map((s) => Float64Array.from(s))
    this.#sinceAccept.fill(0)
  }
}
