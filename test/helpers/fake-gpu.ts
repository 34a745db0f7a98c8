// A stand-in GPU backend for fault-injection tests on machines without a GPU: it computes its
// experts in float64 from the decoded weights (so its numbers are right), and can be told to fail.
import type { Arena } from '../../runtime/arena.js'
import { HetmoeError } from '../../runtime/errors.js'
import type { GpuExpertBackend } from '../../runtime/gpu-open.js'
import type { LayerWork } from '../../runtime/layer-work.js'
import type { Model } from '../../experts/model.js'
import { denseExpert, denseExpertForwardRef } from '../../experts/reference.js'
import { expertShape } from '../../scheduler/cost-model.js'

export class FakeGpu implements GpuExpertBackend {
  readonly kind = 'gpu' as const
  readonly deviceName = 'fake GPU (tests)'
  arena: Arena | undefined
  /** Fail the next n runs with this error code. */
  failNext = 0
  failCode: 'GPU_ERROR' | 'GPU_OOM' = 'GPU_ERROR'
  runs = 0
  rowsComputed = 0
  readonly #model: Model
  readonly #resident: Map<number, number[]>

  constructor(model: Model, resident: Map<number, number[]>) {
    this.#model = model
    this.#resident = resident
    this.expertBytes = expertShape(model.expert(0, 0)).bytes
  }

  resident(): Map<number, number[]> {
    return this.#resident
  }

  /** Bytes each expert takes on the fake device: its stored size, as the cost model counts it. */
  readonly expertBytes: number
  budgetBytes = Infinity
  uploadLog: string[] = []
  /** uploadAsync: how long a copy takes, and failures to inject (the next n uploads). */
  uploadDelayMs = 0
  failUploads = 0
  failUploadCode: 'GPU_ERROR' | 'GPU_OOM' = 'GPU_ERROR'
  /** Async uploads under way, the most residentBytes() ever was, and layer runs started during an upload. */
  uploadsInFlight = 0
  maxResidentBytes = 0
  runsDuringUpload = 0
  #reserved = 0

  /** Resident experts plus the uploads in flight (their bytes are reserved, as the device does). */
  residentBytes(): number {
    let n = 0
    for (const es of this.#resident.values()) n += es.length
    return n * this.expertBytes + this.#reserved
  }

  #add(layer: number, expert: number): void {
    this.#resident.set(layer, [...(this.#resident.get(layer) ?? []), expert])
    this.uploadLog.push(`+${layer}/${expert}`)
    this.maxResidentBytes = Math.max(this.maxResidentBytes, this.residentBytes())
  }

  upload(layer: number, expert: number): number {
    if (this.residentBytes() + this.expertBytes > this.budgetBytes) throw new HetmoeError('GPU_OOM', 'fake budget full')
    this.#add(layer, expert)
    return this.expertBytes
  }

  async uploadAsync(layer: number, expert: number): Promise<number> {
    if (this.residentBytes() + this.expertBytes > this.budgetBytes) throw new HetmoeError('GPU_OOM', 'fake budget full')
    this.#reserved += this.expertBytes
    this.maxResidentBytes = Math.max(this.maxResidentBytes, this.residentBytes())
    this.uploadsInFlight++
    try {
      await new Promise((r) => setTimeout(r, this.uploadDelayMs))
      if (this.failUploads > 0) {
        this.failUploads--
        throw new HetmoeError(this.failUploadCode, `injected ${this.failUploadCode} while uploading expert ${layer}/${expert}`)
      }
    } finally {
      this.#reserved -= this.expertBytes
      this.uploadsInFlight--
    }
    this.#add(layer, expert)
    return this.expertBytes
  }

  evict(layer: number, expert: number): boolean {
    const es = this.#resident.get(layer) ?? []
    if (!es.includes(expert)) return false
    this.#resident.set(layer, es.filter((e) => e !== expert))
    this.uploadLog.push(`-${layer}/${expert}`)
    return true
  }

  /** The last layer work it was given. */
  lastWork?: LayerWork

  /** The `inline` and `sleep` flags of each run, in order. */
  inlineLog: boolean[] = []
  sleepLog: boolean[] = []

  async run(work: LayerWork, _signal?: AbortSignal, options: { inline?: boolean; sleep?: boolean } = {}): Promise<void> {
    this.runs++
    this.lastWork = work
    this.inlineLog.push(options.inline === true)
    this.sleepLog.push(options.sleep === true)
    if (this.uploadsInFlight > 0) this.runsDuringUpload++
    await new Promise((r) => setTimeout(r, 1)) // asynchronous, like the real device
    if (this.failNext > 0) {
      this.failNext--
      throw new HetmoeError(this.failCode, `injected ${this.failCode} (cudaErrorLaunchFailure while running layer ${work.layer})`)
    }
    const buf = this.arena!.buffer
    const D = this.#model.manifest.hiddenSize
    const hidden = new Float32Array(buf, work.hidden.offset, work.hidden.rows * D)
    const out = new Float32Array(buf, work.out.offset, work.out.rows * D)
    for (const w of work.experts) {
      if (!w.shared && !(this.#resident.get(work.layer) ?? []).includes(w.expert)) throw new HetmoeError('GPU_ERROR', `fake GPU asked to run non-resident expert ${work.layer}/${w.expert}`)
      const tokens = new Int32Array(buf, w.tokens, w.count)
      const outRows = new Int32Array(buf, w.outRows, w.count)
      const scales = w.scales !== undefined ? new Float32Array(buf, w.scales, w.count) : undefined
      const x = new Float64Array(w.count * D)
      tokens.forEach((t, i) => x.set(hidden.subarray(t * D, t * D + D), i * D))
      const y = denseExpertForwardRef(denseExpert(this.#model, work.layer, w.shared ? { shared: w.expert } : w.expert), x)
      outRows.forEach((r, i) => {
        for (let d = 0; d < D; d++) out[r * D + d] = (scales ? scales[i] : 1) * y[i * D + d]
      })
      this.rowsComputed += w.count
    }
  }

  async close(): Promise<void> {}
}
