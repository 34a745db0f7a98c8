// The CPU side of LayerWork: one native layer job per call, run by the crew's workers.
import type { Arena } from './arena.js'
import type { CpuCrew } from './cpu-crew.js'
import type { ExpertBackend, LayerWork } from './layer-work.js'
import { runCpuLayer, type CpuLayerExpert, type CpuLayerJob } from './cpu-layer-job.js'
import type { Model } from '../experts/model.js'
import { native, type CpuIsa } from './native.js'

export class CpuBackend implements ExpertBackend {
  readonly kind = 'cpu' as const
  readonly #crew: CpuCrew
  readonly #arena: Arena
  readonly #model: Model

  /** The kernel level, resolved once (HETMOE_ISA is read when the runtime is created). */
  readonly #isa: CpuIsa

  constructor(crew: CpuCrew, arena: Arena, model: Model) {
    this.#crew = crew
    this.#arena = arena
    this.#model = model
    this.#isa = native().cpuResolveIsa('').name
  }

  /** Not async itself: a decode layer awaits the job's own promise, one trip through the microtask queue fewer.
   *  `join`: whether the calling thread runs blocks of the job (false: it waits, leaving its core to
   *  the workers; runtime.ts says when); undefined: the crew's own rule (CrewRunOptions.join). */
  run(work: LayerWork, signal?: AbortSignal, join?: boolean): Promise<unknown> {
    const n = work.experts.length
    if (n === 0) return Promise.resolve()
    const m = this.#model.manifest
    const layer = m.layers[work.layer]
    // One loop, no spreads: this runs once per layer of every decode step.
    const experts: CpuLayerExpert[] = new Array(n)
    let ffnSize = 0
    for (let i = 0; i < n; i++) {
      const w = work.experts[i]
      const matrices = w.shared ? layer.sharedExperts[w.expert] : layer.experts[w.expert]
      // One job has one inner size; shared experts may have their own (Qwen2-MoE), and run as jobs of their own.
      if (i === 0) ffnSize = matrices.up.rows
      else if (matrices.up.rows !== ffnSize) throw new Error(`CpuBackend: experts of one layer job must share their inner size`)
      experts[i] = {
        matrices,
        tokens: { offset: w.tokens, count: w.count },
        outRows: { offset: w.outRows },
        scales: w.scales !== undefined ? { offset: w.scales } : undefined,
      }
    }
    const job: CpuLayerJob = {
      weightsId: this.#model.weightsId,
      ffn: m.ffn,
      hiddenSize: m.hiddenSize,
      ffnSize,
      hidden: work.hidden,
      out: work.out,
      experts,
      isa: this.#isa,
    }
    return runCpuLayer(this.#crew, this.#arena, job, { signal, join })
  }
}
