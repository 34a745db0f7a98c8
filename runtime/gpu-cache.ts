// Which experts of a batch compute on the GPU, and keeping the device's expert cache in step with
// that. ECSS: every expert's home is host memory; the GPU holds copies, so dropping one loses nothing.
//
// Strategies (the first is hetmoe's; the others reproduce how other systems decide, for the benches):
//   hetmoe         the placement plan's experts stay resident (pinned); per batch, cold experts are
//                  streamed in when the cost model says copy + GPU beats the CPU (prefill), then dropped.
//                  Their copies run off the JavaScript thread while the CPU works on the rest of the
//                  batch (GpuBatchChoice.streamed): the cost model charges a copy to the GPU side only.
//                  RRE models know a batch's next layer before it runs: prefetch() starts that layer's
//                  copies as soon as this one lets go of its own (lookahead)
//   on-demand-lru  every active expert runs on the GPU, copied in when missing; LRU eviction
//                  (mixtral-offloading)
//   fiddler-rule   resident experts on the GPU; a missing expert runs on the CPU below 10 tokens,
//                  else is copied in (LRU) (Fiddler)
//   stream-at-32   resident experts on the GPU; when the batch has ≥ 32 tokens every missing active
//                  expert is copied in for this batch and dropped after (llama.cpp's offload rule)
//
// Re-placement (hetmoe only, applyMoves): the runtime changes which experts are pinned while forwards
// run. Evictions first: an expert leaving the placement is taken by no new batch and dropped when the
// last batch using it ends. Then uploads, one at a time, off the JavaScript thread: an expert joins
// (resident and pinned) when its copy has finished, and each upload waits until the bytes it needs are
// free, so the budget holds throughout. Batches choose from what is resident when they start.
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
  /** Experts copied in for this batch before choose() returned (the other strategies' copies). */
  uploaded: number
  /** Cold experts being copied in for this batch off this thread (hetmoe strategy; empty when none):
   *  `streamed` resolves with those whose copies succeeded, which then run on the GPU too; the rest
   *  stay with the CPU. It never rejects. */
  streaming: number[]
  streamed: Promise<Set<number>>
  /** Ends the batch: unpins its experts and drops the ones streamed for it alone. */
  release(): void
}

const key = (layer: number, e: number) => layer * 1_000_000 + e

export interface MoveSet {
  layer: number
  evict: readonly number[]
  upload: readonly number[]
}

export interface MovesResult {
  /** Experts that left the placement and are gone from the device (or will be when their last batch ends). */
  evicted: number
  /** Experts copied in and pinned. */
  uploaded: number
  /** Uploads that did not happen, and why (the expert stays on the CPU). */
  failed: { layer: number; expert: number; error: Error }[]
}

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
  /** Resident experts a re-placement removed while a batch used them: no new batch takes them. */
  readonly #leaving = new Set<number>()
  /** Resident experts streamed in for a batch: dropped when the last batch using them ends (each is in use). */
  readonly #temporary = new Set<number>()
  /** Called when a batch ends (an applyMoves waiting for room). */
  #onRelease: (() => void)[] = []
  #moving = false
  #uploadInFlight = false
  /** Streaming copies under way, by expert: a batch that wants one a batch before it is copying in
   *  waits for that copy instead of starting another. */
  readonly #streamingNow = new Map<number, Promise<boolean>>()
  /** Per layer, the experts prefetch() is copying in (or has) for the next batch to reach it: pinned
   *  until that batch chooses, then left to it. */
  readonly #prefetched = new Map<number, { experts: number[]; taken: boolean }>()
  prefetches = 0
  #stopped = false
  uploads = 0
  evictions = 0
  /** Re-placement: experts copied in, and dropped, by applyMoves. */
  movedIn = 0
  movedOut = 0

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

  /** Pinned experts per layer: the placement in force under the hetmoe strategy. */
  placement(layers: number): number[][] {
    const out: number[][] = Array.from({ length: layers }, () => [])
    for (const k of this.#pinned) {
      const v = this.#lru.get(k)
      if (v && v.layer < layers) out[v.layer].push(v.e)
    }
    return out.map((l) => l.sort((a, b) => a - b))
  }

  /** A re-placement is being applied. */
  get moving(): boolean {
    return this.#moving
  }

  choose(layer: number, counts: Int32Array, batchTokens: number): GpuBatchChoice {
    const onGpu = new Set<number>()
    const temporary: number[] = []
    const want: number[] = []
    let cold = 0
    for (let e = 0; e < counts.length; e++) {
      const n = counts[e]
      if (n === 0) continue
      if (this.#leaving.has(key(layer, e))) continue // on its way out: the CPU computes it
      if (this.isResident(layer, e)) {
        onGpu.add(e)
        continue
      }
      cold++
      if (this.strategy === 'on-demand-lru' || (this.strategy === 'fiddler-rule' && n >= 10)) want.push(e)
      else if (this.strategy === 'stream-at-32' && batchTokens >= 32) {
        want.push(e)
        temporary.push(e)
      }
    }
    // While a re-placement copies an expert in, streaming copies would queue behind that copy and the
    // GPU side would wait for both: this batch's cold experts stay on the CPU instead. With none cold there
    // is nothing to decide (the common case at decode with a good placement).
    let streaming: number[] = []
    if (this.strategy === 'hetmoe' && this.#cost && cold > 0 && !this.#uploadInFlight) {
      // Experts already being copied in (a prefetch, or a batch beside this one) are taken as they
      // come: their copies are paid for, and their bytes are already out of the room.
      const coming = (e: number) => this.#streamingNow.has(key(layer, e))
      const s = planStreaming(this.#shapes[layer], counts, (e) => this.isResident(layer, e) || coming(e), this.#cost, this.#gpu.budgetBytes - this.#gpu.residentBytes(), batchTokens)
      for (let e = 0; e < counts.length; e++) if (counts[e] > 0 && coming(e) && !this.#leaving.has(key(layer, e))) streaming.push(e)
      streaming.push(...s.stream)
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
    for (const e of temporary) if (onGpu.has(e)) this.#temporary.add(key(layer, e))
    for (const e of streaming) this.#pin(layer, e)
    const streamed = streaming.length ? this.#streamIn(layer, streaming) : Promise.resolve(new Set<number>())
    this.#takePrefetch(layer) // after this batch's pins: what it uses stays, the rest goes
    return {
      onGpu,
      uploaded,
      streaming,
      streamed,
      // The runtime calls release() only after the batch's GPU side has settled, which waits for
      // `streamed`: every copy has finished by then.
      release: () => {
        for (const e of streaming) onGpu.add(e) // pinned in choose(), copied in or not; dropped below when temporary
        for (const e of onGpu) this.#unpin(layer, e)
        // The last batch using an expert streamed in (by it or by an earlier batch) drops it; so does
        // the last one using an expert a re-placement removed.
        for (const e of onGpu) {
          const k = key(layer, e)
          if (this.#inUse.has(k)) continue
          if (this.#temporary.delete(k)) this.#evict(layer, e)
          else if (this.#leaving.delete(k)) this.#drop(layer, e)
        }
        if (this.#onRelease.length) for (const f of this.#onRelease.splice(0)) f()
      },
    }
  }

  /**
   * Applies a re-placement in the background (hetmoe strategy): `evict` experts leave the placement,
   * then `upload` experts are copied in one at a time. Forwards keep running meanwhile; one call at a
   * time. Failed uploads are reported, not thrown.
   */
  async applyMoves(moves: readonly MoveSet[]): Promise<MovesResult> {
    if (this.strategy !== 'hetmoe') throw new HetmoeError('BAD_INPUT', `re-placement needs the 'hetmoe' strategy (this cache runs '${this.strategy}')`)
    if (this.#moving) throw new HetmoeError('BAD_INPUT', 'a re-placement is already being applied')
    this.#moving = true
    const result: MovesResult = { evicted: 0, uploaded: 0, failed: [] }
    try {
      for (const m of moves)
        for (const e of m.evict) {
          const k = key(m.layer, e)
          if (!this.#pinned.delete(k) || !this.#lru.has(k)) continue
          result.evicted++
          if (this.#inUse.has(k)) this.#leaving.add(k)
          else this.#drop(m.layer, e)
        }
      for (const m of moves)
        for (const e of m.upload) {
          if (this.#stopped) return result
          const k = key(m.layer, e)
          // Still on the device (leaving, or streamed for a batch): keep it.
          const adopt = (): boolean => {
            if (!this.#leaving.delete(k) && !this.#lru.has(k)) return false
            this.#temporary.delete(k)
            this.#pinned.add(k)
            result.uploaded++
            return true
          }
          if (adopt()) continue
          const bytes = this.#shapes[m.layer][e].bytes
          // Room: experts leaving or streamed for a batch go when their batches end.
          while (this.#gpu.residentBytes() + bytes > this.#gpu.budgetBytes && (this.#leaving.size > 0 || this.#temporary.size > 0) && !this.#stopped)
            await new Promise<void>((resolve) => this.#onRelease.push(resolve))
          if (this.#stopped) return result
          if (adopt()) continue // a batch streamed it in meanwhile
          if (this.#gpu.residentBytes() + bytes > this.#gpu.budgetBytes) {
            result.failed.push({ layer: m.layer, expert: e, error: new HetmoeError('GPU_OOM', `no room for expert ${e} of layer ${m.layer} (${bytes} bytes) within the GPU budget`) })
            continue
          }
          this.#uploadInFlight = true
          try {
            await (this.#gpu.uploadAsync ? this.#gpu.uploadAsync(m.layer, e) : Promise.resolve().then(() => this.#gpu.upload(m.layer, e)))
          } catch (err) {
            result.failed.push({ layer: m.layer, expert: e, error: err instanceof Error ? err : new Error(String(err)) })
            continue
          } finally {
            this.#uploadInFlight = false
          }
          this.#lru.set(k, { layer: m.layer, e, bytes })
          this.#pinned.add(k)
          this.movedIn++
          result.uploaded++
        }
      return result
    } finally {
      this.#moving = false
    }
  }

  /** No more re-placement work: a running applyMoves returns after the upload in flight. */
  stop(): void {
    this.#stopped = true
    for (const f of this.#onRelease.splice(0)) f()
  }

  /** Drops an expert a re-placement removed (the device may be closing: then there is nothing to drop). */
  #drop(layer: number, e: number): void {
    if (this.#stopped) return
    try {
      this.#gpu.evict(layer, e)
    } catch {
      // the GPU is closed or failing; the expert is gone from the placement either way
    }
    this.#lru.delete(key(layer, e))
    this.movedOut++
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

  /** Whether prefetch() could start anything for `layer`: a cold expert of it fits the room left. The
   *  runtime asks first, so that plans with no room to stream (every hot expert resident) skip
   *  counting the next layer's routes at the end of every forward. */
  mayPrefetch(layer: number): boolean {
    if (!this.#prefetching()) return false
    const room = this.#gpu.budgetBytes - this.#gpu.residentBytes()
    const shapes = this.#shapes[layer] ?? []
    for (let e = 0; e < shapes.length; e++) if (shapes[e].bytes <= room && !this.isResident(layer, e)) return true
    return false
  }

  /** Lookahead copies may start: the hetmoe strategy with a cost model, running, no upload under way. */
  #prefetching(): boolean {
    return this.strategy === 'hetmoe' && this.#cost !== undefined && !this.#stopped && !this.#uploadInFlight
  }

  /**
   * Lookahead (hetmoe strategy, RRE): starts copying in the experts the next batch to reach `layer`
   * would stream, given its routed `counts` (known from its token ids before the layer runs), with the
   * room the budget has now. Their copies queue behind any under way and overlap whatever runs until
   * that batch reaches the layer (the app's own work between layers). That batch's choose() finds
   * them resident, or joins their copies; any it does not use are dropped then. A second prefetch
   * for the layer replaces the first. Returns the experts whose copies it started or joined.
   */
  prefetch(layer: number, counts: Int32Array, batchTokens: number): number[] {
    this.#takePrefetch(layer)
    if (!this.#prefetching() || !this.#cost) return [] // (the cost model again for the type checker)
    const room = this.#gpu.budgetBytes - this.#gpu.residentBytes()
    const experts = planStreaming(this.#shapes[layer], counts, (e) => this.isResident(layer, e), this.#cost, room, batchTokens).stream // cold ones only
    if (experts.length === 0) return []
    for (const e of experts) this.#pin(layer, e)
    const entry = { experts, taken: false }
    this.#prefetched.set(layer, entry)
    this.prefetches++
    // Copies that land after their batch chose without them are dropped as they land.
    void this.#streamIn(layer, experts).then(() => {
      if (entry.taken) this.#dropUnused(layer, experts)
    })
    return experts
  }

  /** The layer's prefetch meets its batch (or is replaced): its pins go; arrived experts nobody uses go. */
  #takePrefetch(layer: number): void {
    const entry = this.#prefetched.get(layer)
    if (!entry) return
    this.#prefetched.delete(layer)
    entry.taken = true
    for (const e of entry.experts) this.#unpin(layer, e)
    this.#dropUnused(layer, entry.experts)
  }

  /** Drops experts streamed in (temporary) that no batch holds. */
  #dropUnused(layer: number, experts: readonly number[]): void {
    if (this.#stopped) return
    for (const e of experts) {
      const k = key(layer, e)
      if (!this.#inUse.has(k) && this.#temporary.delete(k)) this.#evict(layer, e)
    }
  }

  /** Streams a batch's experts in (pinned by the caller until its release), one copy at a time off
   *  this thread. An expert another batch is copying in is waited for; one already resident is taken. A
   *  failed copy (no room left: batches beside this one streamed too; or a device error, which the
   *  layer call will meet and report) leaves its expert on the CPU. Resolves with the experts resident. */
  async #streamIn(layer: number, experts: readonly number[]): Promise<Set<number>> {
    const ok = new Set<number>()
    for (const e of experts) {
      const k = key(layer, e)
      let copy = this.#streamingNow.get(k)
      if (!copy && !this.#lru.has(k)) {
        copy = this.#copyIn(layer, e).finally(() => this.#streamingNow.delete(k))
        this.#streamingNow.set(k, copy)
      }
      if ((!copy || (await copy)) && this.#lru.has(k)) ok.add(e)
    }
    return ok
  }

  /** One streaming copy: resident and temporary (dropped when its last batch ends) once it is in. */
  async #copyIn(layer: number, e: number): Promise<boolean> {
    const bytes = this.#shapes[layer][e].bytes
    if (this.#stopped || this.#gpu.residentBytes() + bytes > this.#gpu.budgetBytes) return false
    try {
      await (this.#gpu.uploadAsync ? this.#gpu.uploadAsync(layer, e) : Promise.resolve().then(() => this.#gpu.upload(layer, e)))
    } catch {
      return false
    }
    this.#lru.set(key(layer, e), { layer, e, bytes })
    this.#temporary.add(key(layer, e))
    this.uploads++
    return true
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
