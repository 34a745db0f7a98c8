// The CPU side of LayerWork: one native layer job per call, joined by every pool worker.
import type { Arena } from './arena.js'
import type { CpuPool } from './pool.js'
import type { ExpertBackend, LayerWork } from './layer-work.js'
import { runCpuLayer, type CpuLayerJob } from './cpu-layer-job.js'
import type { Model } from '../experts/model.js'

export class CpuBackend implements ExpertBackend {
  readonly kind = 'cpu' as const
  readonly #pool: CpuPool
  readonly #arena: Arena
  readonly #model: Model

  constructor(pool: CpuPool, arena: Arena, model: Model) {
    this.#pool = pool
    this.#arena = arena
    this.#model = model
  }

  async run(work: LayerWork, signal?: AbortSignal): Promise<void> {
    if (work.experts.length === 0) return
    const m = this.#model.manifest
    const layer = m.layers[work.layer]
    const job: CpuLayerJob = {
      weightsId: this.#model.weightsId,
      ffn: m.ffn,
      hiddenSize: m.hiddenSize,
      ffnSize: m.ffnSize,
      hidden: work.hidden,
      out: { offset: work.out.offset, rows: work.out.rows },
      experts: work.experts.map((w) => ({
        matrices: w.shared ? layer.sharedExperts[w.expert] : layer.experts[w.expert],
        tokens: { offset: w.tokens, count: w.count },
        outRows: { offset: w.outRows },
        ...(w.scales !== undefined ? { scales: { offset: w.scales } } : {}),
      })),
    }
    await runCpuLayer(this.#pool, this.#arena, job, { signal })
  }
}
