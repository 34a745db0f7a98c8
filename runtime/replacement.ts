// Re-placement while serving (hetmoe strategy): the plan assumed a load; traffic drifts. Every forward's
// routing counts feed a Replacer (scheduler/replacer.ts); now and then — after the forward, never in
// its synchronous part — the runtime checks the drift, solves a better placement on the planner thread
// (plan-thread.ts) and applies the moves in the background (GpuExpertCache.applyMoves: evictions
// first, then uploads one at a time off the JavaScript thread).
// Forwards go on meanwhile with whatever is resident when they start.
import { badOption } from './errors.js'
import type { GpuExpertCache, MovesResult } from './gpu-cache.js'
import { uniformShares } from './placement.js'
import { PlanThread } from './plan-thread.js'
import type { PlacementPlan } from './runtime.js'
import type { Model } from '../experts/model.js'
import { expertShape, type CostModel, type ExpertShape } from '../scheduler/cost-model.js'
import type { Placement } from '../scheduler/planner.js'
import { Replacer, type LayerMoves, type Proposal } from '../scheduler/replacer.js'

export interface ReplaceOptions {
  /** Tokens after which an observation's weight halves. Defaults to 4096. */
  halfLifeTokens?: number
  /** Drift (total-variation distance per routed row, worst layer) that triggers a re-plan. Defaults to 0.1. */
  driftThreshold?: number
  /** Fraction of predicted batch time a new placement must save. Defaults to 0.02. */
  minGain?: number
  /** Tokens routed (summed over layers) between two drift checks. Defaults to halfLifeTokens / 4. */
  checkEveryTokens?: number
}

/** The 'replace' event: a re-placement was applied. */
export interface ReplaceEvent {
  /** Per layer with changes: experts that left the GPU placement and experts that joined it. */
  moves: LayerMoves[]
  drift: number
  /** Predicted seconds per batch under the observed load: the placement before, and the proposal. */
  currentS: number
  proposedS: number
  /** Experts removed and added; uploads that failed (those experts stay on the CPU). */
  evicted: number
  uploaded: number
  failed: { layer: number; expert: number; error: string }[]
  /** Wall time from the proposal to the last upload. */
  ms: number
}

export interface ReplacementStats {
  /** Re-placements applied. */
  replacements: number
  /** Experts copied to the GPU, and dropped from it, by re-placements. */
  expertsMovedIn: number
  expertsMovedOut: number
  /** A re-placement is being planned or applied now. */
  replacing: boolean
}

/** Device bytes an expert may take beyond its stored size: 256-byte alignment of up to 9 arrays. */
const DEVICE_SLACK_BYTES = 9 * 256

/** RuntimeOptions.replace, validated: false (off) or the options. */
export function replaceOptions(v: unknown): ReplaceOptions | false {
  if (v === false) return false
  if (v === undefined || v === true) return {}
  const expected = 'true, false or { halfLifeTokens?, driftThreshold?, minGain?, checkEveryTokens? } (positive numbers; minGain ≥ 0, driftThreshold ≤ 1)'
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw badOption('replace', expected, v)
  const o = v as Record<string, unknown>
  const known = ['halfLifeTokens', 'driftThreshold', 'minGain', 'checkEveryTokens']
  for (const [k, x] of Object.entries(o)) {
    if (!known.includes(k)) throw badOption('replace', expected, `{ ${k}: … }`)
    if (x === undefined) continue
    const ok = typeof x === 'number' && Number.isFinite(x) && (k === 'minGain' ? x >= 0 : x > 0) && (k !== 'driftThreshold' || x <= 1)
    if (!ok) throw badOption(`replace.${k}`, k === 'minGain' ? 'a number ≥ 0' : k === 'driftThreshold' ? 'a number in (0, 1]' : 'a positive number', x)
  }
  return o as ReplaceOptions
}

export interface ReplacementSetup {
  model: Model
  cache: GpuExpertCache
  cost: CostModel
  /** The GPU's byte budget for experts. */
  budgetBytes: number
  /** The plan in force (its shares, batch size and streaming reserve, where it carries them). */
  plan: PlacementPlan | undefined
  options: ReplaceOptions
  onReplace: (e: ReplaceEvent) => void
  onWarning: (message: string) => void
}

export class Replacement {
  readonly #cache: GpuExpertCache
  readonly #replacer: Replacer
  readonly #shapes: ExpertShape[][]
  readonly #layers: number
  readonly #checkEvery: number
  readonly #onReplace: (e: ReplaceEvent) => void
  readonly #onWarning: (message: string) => void
  #sinceCheck = 0
  #checkQueued = false
  /** A re-plan on the planner thread, then its moves being applied. */
  #applying: Promise<void> | undefined
  readonly #planner = new PlanThread()
  #stopped = false
  #replacements = 0

  constructor(s: ReplacementSetup) {
    const m = s.model.manifest
    this.#cache = s.cache
    this.#layers = m.layers.length
    this.#onReplace = s.onReplace
    this.#onWarning = s.onWarning
    // Planned with the bytes the device may take, so that a proposal within the budget fits there.
    this.#shapes = m.layers.map((l) => l.experts.map((e) => {
      const shape = expertShape(e)
      return { ...shape, bytes: shape.bytes + DEVICE_SLACK_BYTES }
    }))
    const uniform = uniformShares(s.model)
    const share = s.plan?.share && s.plan.share.length === this.#layers ? s.plan.share : uniform
    const half = s.options.halfLifeTokens ?? 4096
    this.#checkEvery = s.options.checkEveryTokens ?? half / 4
    const budgetBytes = Math.max(0, s.budgetBytes - (s.plan?.streamBytes ?? 0))
    this.#replacer = new Replacer({
      experts: this.#shapes,
      cost: s.cost,
      budgetBytes,
      batchTokens: s.plan?.batchTokens ?? 1,
      placement: this.#placementInForce(budgetBytes),
      assumedShare: share,
      halfLifeTokens: half,
      ...(s.options.driftThreshold !== undefined ? { driftThreshold: s.options.driftThreshold } : {}),
      ...(s.options.minGain !== undefined ? { minGain: s.options.minGain } : {}),
    })
  }

  /** One forward's routing (the call site is in Runtime.forward). Cheap; a due check runs in a microtask. */
  observe(layer: number, counts: Int32Array, tokens: number): void {
    if (this.#stopped) return
    this.#replacer.observe(layer, counts, tokens)
    this.#sinceCheck += tokens
    if (this.#sinceCheck >= this.#checkEvery && !this.#applying && !this.#checkQueued) {
      // A microtask, not setImmediate: a caller awaiting CPU-only forwards back to back may never let
      // the event loop reach its check phase.
      this.#checkQueued = true
      queueMicrotask(() => this.#check())
    }
  }

  stats(): ReplacementStats {
    return {
      replacements: this.#replacements,
      expertsMovedIn: this.#cache.movedIn,
      expertsMovedOut: this.#cache.movedOut,
      replacing: this.#applying !== undefined,
    }
  }

  /** Starts nothing more; waits for the planning or upload in flight, then lets the planner thread go. */
  async stop(): Promise<void> {
    this.#stopped = true
    this.#cache.stop()
    await this.#applying
    await this.#planner.close()
  }

  #check(): void {
    this.#checkQueued = false
    if (this.#stopped || this.#applying) return
    this.#sinceCheck = 0
    // The drift test is cheap and stays here; solving the new placement goes to the planner thread.
    const problem = this.#replacer.due()
    if (!problem) return
    const t0 = performance.now()
    this.#applying = this.#planner
      .plan(problem)
      .then(
        (placement) => {
          if (this.#stopped) return
          const proposal = this.#replacer.conclude(problem, placement)
          if (!proposal) return
          const moves = proposal.moves.filter((m) => m.evict.length > 0 || m.upload.length > 0)
          if (moves.length === 0) return this.#replacer.accept(proposal)
          return this.#cache.applyMoves(moves).then(
            (r) => this.#applied(proposal, moves, r, performance.now() - t0),
            (err) => this.#onWarning(`re-placement failed (${(err as Error).message}); the placement stays as it is`),
          )
        },
        (err) => this.#onWarning(`re-placement: planning failed (${(err as Error).message}); the placement stays as it is`),
      )
      .finally(() => (this.#applying = undefined))
  }

  #applied(p: Proposal, moves: LayerMoves[], r: MovesResult, ms: number): void {
    // The placement in force is what is pinned now (a failed upload leaves its expert on the CPU; a
    // later check proposes it again if it is still worth it).
    this.#replacer.accept({ ...p, placement: this.#placementInForce(p.placement.budgetBytes) })
    this.#replacements++
    if (r.failed.length)
      this.#onWarning(
        `re-placement: ${r.failed.length} of ${r.failed.length + r.uploaded} uploads failed; those experts run on the CPU (first: layer ${r.failed[0].layer} expert ${r.failed[0].expert}: ${r.failed[0].error.message})`,
      )
    this.#onReplace({
      moves,
      drift: p.drift,
      currentS: p.currentS,
      proposedS: p.proposedS,
      evicted: r.evicted,
      uploaded: r.uploaded,
      failed: r.failed.map((f) => ({ layer: f.layer, expert: f.expert, error: f.error.message })),
      ms,
    })
  }

  #placementInForce(budgetBytes: number): Placement {
    const sets = this.#cache.placement(this.#layers)
    const layers = sets.map((gpuExperts, layer) => ({ layer, gpuExperts, gpuBytes: gpuExperts.reduce((s, e) => s + this.#shapes[layer][e].bytes, 0) }))
    return { budgetBytes, gpuBytes: layers.reduce((s, l) => s + l.gpuBytes, 0), layers, predictedBatchS: 0, exact: false }
  }
}
