// Which experts of a batch compute on the GPU, and keeping the device's expert cache in step with
// that. ECSS: every expert's home is host memory; the GPU holds copies, so dropping one loses nothing.
//
// Strategies (the first is hetmoe's; the others reproduce how other systems decide, for the benches):
//   hetmoe         the placement plan's experts stay resident (pinned); per batch, cold experts are
//                  streamed in when the cost model says copy + GPU beats the CPU (prefill), then dropped
//   on-demand-lru  every active expert runs on the GPU, copied in when missing; LRU eviction
//                  (mixtral-offloading)
//   fiddler-rule   resident experts on the GPU; a missing expert runs on the CPU below 10 tokens,
//                  else is copied in (LRU) (Fiddler)
//   stream-at-32   resident experts on the GPU; when the batch has ≥ 32 tokens every missing active
//                  expert is copied in for this batch and dropped after (llama.cpp's offload rule)
import { HetmoeError } from './errors.js'
import type { GpuExpertBackend } from './gpu-open.js'
import type { Model } from '../experts/model.js'
import { type CostModel, expertShape, type ExpertShape } from '../scheduler/cost-model.js'
import { planStreaming } from '../scheduler/streaming.js'

export const GPU_STRATEGIES = ['hetmoe', 'on-demand-lru', 'fiddler-rule', 'stream-at-32'] as const
export type GpuStrategy = (typeof GPU_STRATEGIES)[number]

export interface GpuBatchChoice {
  /** Experts of the layer that run on the GPU this batch (all resident now). */
  onGpu: Set<number>
  /** Experts copied in for this batch. */
  uploaded: number
  /** Ends the batch: unpins its experts and drops the ones streamed for it alone. */
  release(): void
}

const key = (layer: number, e: number) => layer * 1_000_000 + e

export class GpuExpertCache {
  readonly strategy: GpuStrategy
  readonly #gpu: GpuExpertBackend
  readonly #shapes: ExpertShape[][]
  readonly #cost: CostModel | undefined
  /** Plan experts: never evicted under the hetmoe strategy. */
  readonly #pinned = new Set<number>()
  /** Resident experts in least-recently-used order (Map iteration order is insertion order). */
  readonly #lru = new Map<number, { layer: number; e: number; bytes: number }>()
  /** Experts a running batch needs: never evicted under it. */
  readonly #inUse = new Map<number, number>()
  uploads = 0
  evictions = 0

  constructor(gpu: GpuExpertBackend, model: Model, strategy: GpuStrategy, cost: CostModel | undefined) {
    this.#gpu = gpu
    this.strategy = strategy
    this.#cost = cost
    this.#shapes = model.manifest.layers.map((l) => l.experts.map(expertShape))
    for (const [layer, experts] of gpu.resident())
      for (const e of experts) {
        this.#lru.set(key(layer, e), { layer, e, bytes: this.#shapes[layer][e].bytes })
        if (strategy === 'hetmoe') this.#pinned.add(key(layer, e))
      }
  }

  isResident(layer: number, e: number): boolean {
    return this.#lru.has(key(layer, e))
  }

  get residentCount(): number {
    return this.#lru.size
  }

  choose(layer: number, counts: Int32Array, batchTokens: number): GpuBatchChoice {
    const onGpu = new Set<number>()
    const temporary: number[] = []
    const want: number[] = []
    for (let e = 0; e < counts.length; e++) {
      const n = counts[e]
      if (n === 0) continue
      if (this.isResident(layer, e)) onGpu.add(e)
      else if (this.strategy === 'on-demand-lru' || (this.strategy === 'fiddler-rule' && n >= 10)) want.push(e)
      else if (this.strategy === 'stream-at-32' && batchTokens >= 32) {
        want.push(e)
        temporary.push(e)
      }
    }
    if (this.strategy === 'hetmoe' && this.#cost) {
      const s = planStreaming(this.#shapes[layer], counts, (e) => this.isResident(layer, e), this.#cost, this.#gpu.budgetBytes - this.#gpu.residentBytes(), batchTokens)
      want.push(...s.stream)
      temporary.push(...s.stream)
    }
    for (const e of onGpu) this.#touch(layer, e)
    let uploaded = 0
    for (const e of want) {
      this.#pin(layer, e) // protects it from the evictions its neighbours' uploads make
      if (this.#upload(layer, e)) {
        onGpu.add(e)
        uploaded++
      } else this.#unpin(layer, e)
    }
    for (const e of onGpu) if (!want.includes(e)) this.#pin(layer, e)
    const temp = new Set(temporary.filter((e) => onGpu.has(e)))
    return {
      onGpu,
      uploaded,
      release: () => {
        for (const e of onGpu) this.#unpin(layer, e)
        for (const e of temp) if (!this.#inUse.has(key(layer, e))) this.#evict(layer, e)
      },
    }
  }

  #touch(layer: number, e: number): void {
    const k = key(layer, e)
    const v = this.#lru.get(k)
    if (v) this.#lru.delete(k), this.#lru.set(k, v)
  }

  #pin(layer: number, e: number): void {
    const k = key(layer, e)
    this.#inUse.set(k, (this.#inUse.get(k) ?? 0) + 1)
  }

  #unpin(layer: number, e: number): void {
    const k = key(layer, e)
    const n = (this.#inUse.get(k) ?? 1) - 1
    if (n <= 0) this.#inUse.delete(k)
    else this.#inUse.set(k, n)
  }

  #evict(layer: number, e: number): void {
    this.#gpu.evict(layer, e)
    this.#lru.delete(key(layer, e))
    this.evictions++
  }

  /** Copies an expert in, evicting least-recently-used unpinned experts until it fits. False: no room. */
  #upload(layer: number, e: number): boolean {
    const bytes = this.#shapes[layer][e].bytes
    for (;;) {
      if (this.#gpu.residentBytes() + bytes <= this.#gpu.budgetBytes) {
        try {
          this.#gpu.upload(layer, e)
          this.#lru.set(key(layer, e), { layer, e, bytes })
          this.uploads++
          return true
        } catch (err) {
          if (!(err instanceof HetmoeError && err.code === 'GPU_OOM')) throw err
        }
      }
      const victim = [...this.#lru.entries()].find(([k]) => !this.#pinned.has(k) && !this.#inUse.has(k))
      if (!victim) return false
      this.#evict(victim[1].layer, victim[1].e)
    }
  }
}
