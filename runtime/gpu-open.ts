// Choosing and opening the GPU backend: an ordered fallback (the requested device → CPU only), one
// warning line for each step down, and the initial upload of the plan's hot experts.
import type { Arena } from './arena.js'
import { HetmoeError, badOption } from './errors.js'
import { GpuBackend, type GpuLayerTiming } from './gpu-backend.js'
import type { ExpertBackend, LayerWork } from './layer-work.js'
import { planForModel } from './placement.js'
import type { PlacementPlan } from './runtime.js'
import { parseSize } from './size.js'
import type { Model } from '../experts/model.js'

/** What the runtime needs of a GPU: run LayerWork for resident experts, and report residency. */
export interface GpuExpertBackend extends ExpertBackend {
  readonly kind: 'gpu'
  readonly deviceName: string
  /** Resident experts per layer. */
  resident(): Map<number, number[]>
  residentBytes(): number
  readonly budgetBytes: number
  /** Copies an expert's weights in (GPU_OOM when they do not fit). */
  upload(layer: number, expert: number): number
  /**
   * The same copy off the JavaScript thread (re-placement): the expert's bytes count in residentBytes()
   * from the call on, and it is resident once the promise resolves. Backends without it get upload()
   * run after the current turn instead.
   */
  uploadAsync?(layer: number, expert: number): Promise<number>
  /** Drops an expert; layer calls already running that use it are not disturbed. */
  evict(layer: number, expert: number): boolean
  /** The placement its experts were uploaded for, when it chose one (openGpu). */
  readonly plan?: PlacementPlan
  close(): Promise<void>
  /** Runs the layer's resident experts; a real device also reports its stream and kernel times.
   *  `inline`: the caller has nothing to overlap with the call, which may then run on its thread;
   *  `sleep`: wait for the device asleep rather than spinning (GpuBackend.runLayer). */
  run(work: LayerWork, signal?: AbortSignal, options?: { inline?: boolean; sleep?: boolean }): Promise<GpuLayerTiming | void>
}

export interface OpenGpuOptions {
  setting: 'auto' | 'off' | number
  gpuMemory: number | string | undefined
  arena: Arena
  model: Model
  plan: PlacementPlan | undefined
  warn: (message: string) => void
}

const keyOf = (layer: number, expert: number): string => `L${layer}/E${expert}`

/** The runtime's view of a GpuBackend: LayerWork in, experts named by (layer, expert). */
export class GpuExperts implements GpuExpertBackend {
  readonly kind = 'gpu' as const
  readonly deviceName: string
  readonly #gpu: GpuBackend
  readonly #model: Model
  readonly #arena: Arena
  plan: PlacementPlan | undefined

  constructor(gpu: GpuBackend, model: Model, arena: Arena) {
    this.#gpu = gpu
    this.#model = model
    this.#arena = arena
    this.deviceName = gpu.deviceName
  }

  /** Copies one expert's weights to the device (GPU_OOM when the budget is full). Returns its bytes. */
  upload(layer: number, expert: number): number {
    const m = this.#model
    return this.#gpu.upload(keyOf(layer, expert), m.weightsId, m.manifest.ffn, m.expert(layer, expert))
  }

  /** upload() on a worker thread (see GpuBackend.uploadAsync). */
  uploadAsync(layer: number, expert: number): Promise<number> {
    const m = this.#model
    return this.#gpu.uploadAsync(keyOf(layer, expert), m.weightsId, m.manifest.ffn, m.expert(layer, expert))
  }

  evict(layer: number, expert: number): boolean {
    return this.#gpu.evict(keyOf(layer, expert))
  }

  isResident(layer: number, expert: number): boolean {
    return this.#gpu.isResident(keyOf(layer, expert))
  }

  resident(): Map<number, number[]> {
    const out = new Map<number, number[]>()
    for (const r of this.#gpu.resident()) {
      const m = /^L(\d+)\/E(\d+)$/.exec(r.key)
      if (!m) continue
      const layer = Number(m[1])
      out.set(layer, [...(out.get(layer) ?? []), Number(m[2])])
    }
    return out
  }

  residentBytes(): number {
    return this.#gpu.bytesUsed
  }

  get budgetBytes(): number {
    return this.#gpu.budgetBytes
  }

  async run(work: LayerWork, signal?: AbortSignal, options: { inline?: boolean; sleep?: boolean } = {}): Promise<GpuLayerTiming> {
    if (signal?.aborted) throw new HetmoeError('ABORTED', 'forward aborted')
    const buf = this.#arena.buffer
    const D = this.#model.manifest.hiddenSize
    return await this.#gpu.runLayer({
      D,
      hidden: new Float32Array(buf, work.hidden.offset, work.hidden.rows * D),
      out: new Float32Array(buf, work.out.offset, work.out.rows * D),
      experts: work.experts.map((w) => ({
        key: keyOf(work.layer, w.expert),
        tokenRows: new Int32Array(buf, w.tokens, w.count),
        outRows: new Int32Array(buf, w.outRows, w.count),
        ...(w.scales !== undefined ? { scale: new Float32Array(buf, w.scales, w.count) } : {}),
      })),
    }, options)
  }

  async close(): Promise<void> {
    this.#gpu.close()
  }
}

/**
 * Opens the GPU the options ask for and uploads the plan's experts (or a plan made now). 'auto' steps
 * down to CPU-only with one warning when no GPU is usable; an explicit device index fails instead.
 */
export async function openGpu(o: OpenGpuOptions): Promise<GpuExperts | undefined> {
  if (o.setting === 'off') return undefined
  const explicit = typeof o.setting === 'number'
  const unusable = (why: string): undefined => {
    if (explicit) throw new HetmoeError('GPU_ERROR', `GPU ${o.setting} was asked for but cannot be used: ${why}. Use gpu: 'auto' or 'off' to run on the CPU.`)
    o.warn(`no usable GPU (${why}); running every expert on the CPU`)
    return undefined
  }
  const avail = GpuBackend.available()
  if (!avail.available) return unusable(avail.reason ?? 'unknown reason')
  let budgetBytes: number | undefined
  if (typeof o.gpuMemory === 'string') {
    budgetBytes = parseSize(o.gpuMemory)
    if (budgetBytes === undefined) throw badOption('gpuMemory', "a byte count or a size such as '20GiB'", o.gpuMemory)
  } else if (o.gpuMemory !== undefined) {
    if (!Number.isSafeInteger(o.gpuMemory) || o.gpuMemory <= 0) throw badOption('gpuMemory', 'a positive number of bytes', o.gpuMemory)
    budgetBytes = o.gpuMemory
  }
  const device = explicit ? (o.setting as number) : 0
  let gpu: GpuBackend
  try {
    gpu = GpuBackend.open({ device, budgetBytes: budgetBytes ?? 0, arena: o.arena, warn: o.warn })
  } catch (err) {
    return unusable((err as Error).message)
  }
  const experts = new GpuExperts(gpu, o.model, o.arena)
  const plan = o.plan ?? (await planForModel(o.model, { gpu: device, batch: 1, gpuMemory: gpu.budgetBytes })).plan
  experts.plan = plan
  let uploaded = 0
  uploadLoop: for (const l of plan?.layers ?? [])
    for (const e of l.gpuExperts) {
      try {
        experts.upload(l.layer, e)
        uploaded++
      } catch (err) {
        if (err instanceof HetmoeError && err.code === 'GPU_OOM') {
          o.warn(`the GPU budget filled after ${uploaded} experts (${(err as Error).message}); the rest of the plan runs on the CPU`)
          break uploadLoop
        }
        gpu.close()
        throw err
      }
    }
  return experts
}
