// The predicted time of one MoE layer for a batch, given which experts are GPU-resident.
//
// CPU and GPU work concurrently, so a layer takes max(CPU part, GPU part), each part being the sum of
// its experts' expected times (cost-model.ts: expectedRooflineTime) plus a per-layer overhead when
// that side has any work. The max of two random sums is not the max of their expectations: with one
// token (decode, top-1) only one side ever works and the layer costs the *sum* of both expectations;
// with many tokens both sides always work and it costs the max. So:
//   E[max(C, G)] ≈ E[C] + E[G] − P(both sides busy) · min(E[C], E[G])
// which is exact at both ends and lets the planner value decode and prefill placements correctly.
import { CostModel, expectedRooflineTime, type ExpertShape } from './cost-model.js'

export class LayerTimeModel {
  readonly numExperts: number
  /** Expected CPU and GPU seconds of each expert at this batch size. */
  readonly cpuS: Float64Array
  readonly gpuS: Float64Array
  /** Probability that a token routes to each expert (sums to K over the layer). */
  readonly share: Float64Array
  readonly bytes: Float64Array
  readonly batchTokens: number
  readonly cpuLayerS: number
  readonly gpuLayerS: number
  /** The hand-over cost of a GPU call that does not run inline: charged whenever the CPU side has
   *  work too (a batch small enough to run inline otherwise; larger ones have it in gpuLayerS). */
  readonly gpuBesideCpuS: number
  /** What the CPU side costs more beside a GPU call at prefill sizes (CostModel.cpuBesideGpuS). */
  readonly cpuBesideGpuS: number

  constructor(experts: readonly ExpertShape[], share: ArrayLike<number>, batchTokens: number, cost: CostModel) {
    const E = experts.length
    this.numExperts = E
    this.batchTokens = batchTokens
    this.cpuS = new Float64Array(E)
    this.gpuS = new Float64Array(E)
    this.share = Float64Array.from(share)
    this.bytes = new Float64Array(E)
    // The GPU's kernel follows the call's busiest expert: the layer's, at its expected count.
    const largeBatch = cost.gpuLargeBatch(batchTokens * Math.max(0, ...this.share))
    for (let e = 0; e < E; e++) {
      this.bytes[e] = experts[e].bytes
      this.cpuS[e] = expectedRooflineTime(cost.cpuRoofline(experts[e]), batchTokens, this.share[e])
      this.gpuS[e] = cost.hasGpu ? expectedRooflineTime(cost.gpuRoofline(experts[e], largeBatch), batchTokens, this.share[e]) : Infinity
    }
    // The job's last expert, at the tokens an expert the batch routes to expects.
    let routed = 0
    let active = 0
    for (const p of this.share) if (p > 0) (routed += p), active++
    this.cpuLayerS = cost.cpuLayerS(experts, active > 0 ? (batchTokens * routed) / active : 0)
    this.gpuLayerS = cost.hasGpu ? cost.gpuLayerS(batchTokens, experts[0]?.hiddenSize) : 0
    this.gpuBesideCpuS = cost.hasGpu && cost.gpuCallsInline(batchTokens) ? cost.gpuAsyncS() : 0
    this.cpuBesideGpuS = cost.hasGpu ? cost.cpuBesideGpuS(batchTokens) : 0
  }

  /** Layer seconds from the sums over each side: expert seconds and token shares. */
  time(cpuSum: number, gpuSum: number, cpuShare: number, gpuShare: number): number {
    const B = this.batchTokens
    const cpuIdle = Math.pow(1 - Math.min(1, cpuShare), B)
    const gpuIdle = Math.pow(1 - Math.min(1, gpuShare), B)
    const bothIdle = Math.pow(Math.max(0, 1 - cpuShare - gpuShare), B)
    const bothBusy = Math.min(1, Math.max(0, 1 - cpuIdle - gpuIdle + bothIdle))
    const c = cpuSum + (cpuShare > 0 ? (1 - cpuIdle) * this.cpuLayerS : 0) + bothBusy * this.cpuBesideGpuS
    const g = gpuShare > 0 || gpuSum > 0 ? gpuSum + (1 - gpuIdle) * this.gpuLayerS + bothBusy * this.gpuBesideCpuS : 0
    return c + g - bothBusy * Math.min(c, g)
  }

  /** Layer seconds with `onGpu` (a predicate or a set of expert ids) resident. */
  timeOf(onGpu: (e: number) => boolean): number {
    const s = this.#sums(onGpu)
    return this.time(s.cs, s.gs, s.cp, s.gp)
  }

  /** Expected seconds of each side's work per batch (its layer overhead included when it has work). */
  sides(onGpu: (e: number) => boolean): { cpuS: number; gpuS: number } {
    const { cs, gs, cp, gp } = this.#sums(onGpu)
    const B = this.batchTokens
    const busy = (share: number) => 1 - Math.pow(1 - Math.min(1, share), B)
    const both = cp > 0 && gp > 0 ? busy(cp) * busy(gp) : 0
    return {
      cpuS: cs + (cp > 0 ? busy(cp) * this.cpuLayerS : 0) + both * this.cpuBesideGpuS,
      gpuS: gs + (gp > 0 ? busy(gp) * this.gpuLayerS : 0) + both * this.gpuBesideCpuS,
    }
  }

  #sums(onGpu: (e: number) => boolean): { cs: number; gs: number; cp: number; gp: number } {
    let cs = 0, gs = 0, cp = 0, gp = 0
    for (let e = 0; e < this.numExperts; e++) {
      if (onGpu(e)) {
        gs += this.gpuS[e]
        gp += this.share[e]
      } else {
        cs += this.cpuS[e]
        cp += this.share[e]
      }
    }
    return { cs, gs, cp, gp }
  }
}
