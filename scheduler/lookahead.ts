// Lookahead for RRE models: routes depend only on token ids, so as soon as a batch's ids are known
// the experts of *every* layer are too, and which of them a batch would stream. This is the planner's
// view over all layers at once; the runtime looks one layer ahead with the same decision
// (runtime/gpu-cache.ts: prefetch, started when a forward of the layer before lets go of its own
// streamed experts, so that the copies overlap what the app does between layers).
import type { CostModel, ExpertShape } from './cost-model.js'
import type { RreRouter } from './route-rre.js'
import { planStreaming } from './streaming.js'

export interface LayerLookahead {
  layer: number
  /** Tokens routed to each expert of the layer. */
  counts: Int32Array
  /** Experts with at least one token, ascending. */
  needed: number[]
  /** Needed experts that are GPU-resident. */
  gpu: number[]
  /** Needed cold experts worth copying to the GPU for this batch (see streaming.ts), in priority order. */
  stream: number[]
  /** Needed experts computed on the CPU. */
  cpu: number[]
}

export interface LookaheadContext {
  routers: readonly RreRouter[]
  /** [layer][expert] shapes. */
  experts: readonly (readonly ExpertShape[])[]
  /** [layer] resident experts. */
  resident: readonly ReadonlySet<number>[]
  cost: CostModel
  /** GPU scratch bytes for streamed weights, per layer. */
  streamBytes: number
}

/** For every layer: which experts the batch needs and where each runs. Validates ids and domain first. */
export function lookahead(ctx: LookaheadContext, tokenIds: Int32Array, domain: string | number): LayerLookahead[] {
  return ctx.routers.map((r, layer) => {
    const counts = new Int32Array(r.numExperts)
    r.countInto(tokenIds, domain, counts)
    const resident = ctx.resident[layer] ?? new Set<number>()
    const { stream } = planStreaming(ctx.experts[layer], counts, (e) => resident.has(e), ctx.cost, ctx.streamBytes)
    const streamed = new Set(stream)
    const needed = [...counts.keys()].filter((e) => counts[e] > 0)
    return {
      layer,
      counts,
      needed,
      gpu: needed.filter((e) => resident.has(e)),
      stream,
      cpu: needed.filter((e) => !resident.has(e) && !streamed.has(e)),
    }
  })
}
