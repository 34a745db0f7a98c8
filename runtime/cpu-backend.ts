// The CPU side of LayerWork: one native layer job per call, run by the crew's workers.
import type { Arena } from './arena.js'
import type { CpuCrew } from './cpu-crew.js'
import type { ExpertBackend, LayerWork } from './layer-work.js'
import { runCpuLayer, type CpuLayerJob } from './cpu-layer-job.js'
import type { Model } from '../experts/model.js'

export class CpuBackend implements ExpertBackend {
  readonly kind = 'cpu' as const
  readonly #crew: CpuCrew
  readonly #arena: Arena
  readonly #model: Model

  constructor(crew: CpuCrew, arena: Arena, model: Model) {
    this.#crew = crew
    this.#arena = arena
    this.#model = model
  }

  async run(work: LayerWork, signal?: AbortSignal): Promise<void> {
    if (work.experts.length === 0) return
    const m = this.#model.manifest
    const layer = m.layers[work.layer]
    const experts = work.experts.map((w) => (w.shared ? layer.sharedExperts[w.expert] : layer.experts[w.expert]))
    // One job has one inner size; shared experts may have their own (Qwen2-MoE), and run as jobs of their own.
    const ffnSize = experts[0].up.rows
    if (experts.some((e) => e.up.rows !== ffnSize)) throw new Error(`CpuBackend: experts of one layer job must share their inner size`)
    const job: CpuLayerJob = {
      weightsId: this.#model.weightsId,
      ffn: m.ffn,
      hiddenSize: m.hiddenSize,
      ffnSize,
      hidden: work.hidden,
      out: { offset: work.out.offset, rows: work.out.rows },
      experts: work.experts.map((w, i) => ({
        matrices: experts[i],
        tokens: { offset: w.tokens, count: w.count },
        outRows: { offset: w.outRows },
        ...(w.scales !== undefined ? { scales: { offset: w.scales } } : {}),
      })),
    }
    await runCpuLayer(this.#crew, this.#arena, job, { signal })
  }
}
