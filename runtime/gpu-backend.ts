// The GPU backend (ECSS, device side): a device, an expert cache in device memory within a byte
// budget, the arena registered for DMA, and the layer call that runs every GPU-resident expert of a
// layer through the sparse-sparse kernels while JavaScript and the CPU workers go on.
//
//   const gpu = GpuBackend.open({ budgetBytes: 8 << 30, arena })
//   gpu.upload('L3/E17', weightsId, 'swiglu', manifestExpertRef)   // from the mapped weights.bin
//   await gpu.uploadAsync('L3/E18', weightsId, 'swiglu', ref)       // the same, off this thread
//   await gpu.runLayer({ experts: [{ key: 'L3/E17', tokenRows, outRows, scale }], hidden, out })
//   await gpu.runLayer(call, { inline: true })                     // decode: this thread waits
//   gpu.close()
//
// runLayer semantics (shared with the CPU backend): for every expert and selection i,
//   out[outRows[i]] = (scale?.[i] ?? 1) * FFN_e(hidden[tokenRows[i]])      (fp32, overwrite)
// where hidden is [T x D] and out is [rows x D]; rows of `out` not named are left untouched. An
// expert with no selections is allowed (and costs nothing). Weights go through bf16 tensor cores
// with fp32 accumulation; hidden rows are rounded to bf16 on the device, and so is the intermediate
// FFN activation (relative error against a float64 reference is typically 3e-3..6e-3).
import { HetmoeError } from './errors.js'
import { native, type NativeGpuMatrix, type NativeGpuResident } from './native.js'
import type { Arena } from './arena.js'


export type GpuFfn = 'swiglu' | 'gelu'

export interface GpuExpertSelection {
  /** The expert's cache key, as given to upload(). */
  key: string
  /** Row of `hidden` for each selection (int32). */
  tokenRows: Int32Array
  /** Row of `out` each selection writes (int32); rows must be distinct across the whole call. */
  outRows: Int32Array
  /** Routing weight per selection; omitted: 1 (Random Routed Experts). */
  scale?: Float32Array
}

export interface GpuLayerCall {
  experts: GpuExpertSelection[]
  /** [T x D] fp32, may be a view into the arena. */
  hidden: Float32Array
  /** [rows x D] fp32, may be a view into the arena. */
  out: Float32Array
  /** Model width; default: the D of the first expert's upload. */
  D?: number
}

export interface GpuLayerTiming {
  /** Stream time of the whole call: copies in, kernels, copies out. */
  gpuMs: number
  /** The projection kernels alone. */
  kernelMs: number
  /** Of gpuMs, what comes before the kernels: the selection arrays and hidden rows copied in and
   *  converted to bf16 (what follows them, gpuMs − copyInMs − kernelMs, is the output rows going back). */
  copyInMs: number
  /** Hidden or out went through the pinned staging buffer (not inside the registered arena). */
  staged: boolean
  /** Wall time of the call on its native thread (preparing, enqueueing, waiting for the stream),
   *  and of that the part before the first copy was enqueued. */
  hostMs: number
  prepMs: number
}

export interface GpuOpenOptions {
  device?: number
  /** Device bytes the expert cache may hold; default 80% of the free memory at open. */
  budgetBytes?: number
  /** Registered with cudaHostRegister at open, unregistered at close. */
  arena?: Arena
  /** Where the one-line fallback note goes when registration fails (default console.warn). */
  warn?: (line: string) => void
}

/** Turns the addon's coded errors into HetmoeErrors (GPU_OOM stays distinct for the CPU fallback). */
function wrap(e: unknown): HetmoeError {
  if (e instanceof HetmoeError) return e
  const err = e as { code?: string; message?: string }
  const code = err?.code === 'GPU_OOM' ? 'GPU_OOM' : 'GPU_ERROR'
  return new HetmoeError(code, String(err?.message ?? e), { cause: e })
}

function call<T>(f: () => T): T {
  try {
    return f()
  } catch (e) {
    throw wrap(e)
  }
}

export class GpuBackend {
  readonly handle: number
  readonly deviceName: string
  /** '' when the arena is registered (DMA / zero-copy); else why not (copies stage through pinned memory). */
  readonly registration: string
  #arenaView?: Uint8Array
  #D = new Map<string, number>()
  #closed = false
  /** Settles when the last queued uploadAsync has. */
  #uploadTail: Promise<void> | undefined

  /** Whether a usable GPU exists, and if not, why (never throws). */
  static available(): { available: boolean; reason?: string } {
    try {
      return native().gpuAvailable()
    } catch (e) {
      return { available: false, reason: (e as Error).message }
    }
  }

  static open(options: GpuOpenOptions = {}): GpuBackend {
    return new GpuBackend(options)
  }

  private constructor(options: GpuOpenOptions) {
    this.handle = call(() => native().gpuOpen(options.device ?? 0, options.budgetBytes ?? 0))
    this.deviceName = call(() => native().gpuDeviceName(this.handle))
    let reg = 'no arena given'
    if (options.arena) {
      const a = options.arena
      const view = new Uint8Array(a.buffer, a.base, a.byteLength)
      reg = call(() => native().gpuRegisterHost(this.handle, view))
      if (reg === '') this.#arenaView = view
      else (options.warn ?? console.warn)(`hetmoe: GPU could not register the arena (${reg}); copies go through a pinned staging buffer`)
    }
    this.registration = reg
  }

  #live(): void {
    if (this.#closed) throw new HetmoeError('GPU_ERROR', 'this GpuBackend was closed')
  }

  /**
   * Uploads one expert from a memory-mapped weights file (native().mapWeights) into the device
   * cache, repacking it for the kernels. Throws GPU_OOM when the budget or the device is full.
   */
  upload(
    key: string,
    weightsId: number,
    ffn: GpuFfn,
    expert: { gate?: NativeGpuMatrix; up: NativeGpuMatrix; down: NativeGpuMatrix },
  ): number {
    this.#live()
    const bytes = call(() => native().gpuUpload(this.handle, key, weightsId, ffn, expert))
    this.#D.set(key, expert.up.cols)
    return bytes
  }

  /**
   * upload() on a worker thread: resolves with the device bytes when the expert is resident. Layer
   * calls and the other methods go on meanwhile. Uploads run one at a time, queued here, so that at
   * most one holds a libuv thread (queued in the addon, each would hold one while it waited, and
   * layer calls would queue behind them). The expert's bytes count in bytesUsed from the start of its
   * copy; GPU_OOM when they do not fit. An upload that is next starts within this call, so the weights
   * file may be unmapped as soon as it returns.
   */
  uploadAsync(
    key: string,
    weightsId: number,
    ffn: GpuFfn,
    expert: { gate?: NativeGpuMatrix; up: NativeGpuMatrix; down: NativeGpuMatrix },
  ): Promise<number> {
    const start = (): Promise<number> => {
      this.#live()
      return native().gpuUploadAsync(this.handle, key, weightsId, ffn, expert)
    }
    let p: Promise<number>
    if (this.#uploadTail) p = this.#uploadTail.then(start)
    else {
      try {
        p = start()
      } catch (e) {
        p = Promise.reject(e)
      }
    }
    const tail: Promise<void> = p.then(
      () => undefined,
      () => undefined,
    )
    this.#uploadTail = tail
    void tail.then(() => {
      if (this.#uploadTail === tail) this.#uploadTail = undefined
    })
    return p.then(
      (bytes) => {
        this.#D.set(key, expert.up.cols)
        return bytes
      },
      (e) => {
        throw wrap(e)
      },
    )
  }

  evict(key: string): boolean {
    this.#live()
    this.#D.delete(key)
    return call(() => native().gpuEvict(this.handle, key))
  }

  isResident(key: string): boolean {
    this.#live()
    return call(() => native().gpuResident(this.handle, key))
  }

  get bytesUsed(): number {
    this.#live()
    return call(() => native().gpuBytesUsed(this.handle))
  }

  get budgetBytes(): number {
    this.#live()
    return call(() => native().gpuBudget(this.handle))
  }

  /** Tokens of a call's busiest expert from which it runs the large-batch kernel; 0: never here. */
  get largeBatchMinTokens(): number {
    this.#live()
    return call(() => native().gpuLargeBatchMinTokens(this.handle))
  }

  resident(): NativeGpuResident[] {
    this.#live()
    return call(() => native().gpuResidentExperts(this.handle))
  }

  /**
   * Runs every listed expert; resolves when `out` holds the results. The call runs on a libuv thread,
   * or with `inline` on this one, which then waits for the device (a decode-size call takes a few
   * hundred µs; handing it to another thread and being woken again costs ~0.1-0.25 ms on a virtual
   * machine whose idle cores sleep). Inline suits a caller with nothing else to do meanwhile.
   * `sleep`: the waiting thread (the libuv one, or this one inline) sleeps until the device is done
   * instead of spinning on a core, which CPU work running meanwhile wants (runtime.ts: sidesBeside).
   */
  async runLayer(c: GpuLayerCall, options: { inline?: boolean; sleep?: boolean } = {}): Promise<GpuLayerTiming> {
    this.#live()
    const D = c.D ?? (c.experts.length ? this.#D.get(c.experts[0].key) : undefined)
    if (D === undefined) {
      if (c.experts.length === 0) return { gpuMs: 0, kernelMs: 0, copyInMs: 0, staged: false, hostMs: 0, prepMs: 0 }
      throw new HetmoeError('BAD_INPUT', `runLayer: expert ${c.experts[0].key} is not resident on the GPU`)
    }
    try {
      if (options.inline) return native().gpuRunLayerSync(this.handle, c.experts, c.hidden, D, c.out, options.sleep === true)
      return await native().gpuRunLayer(this.handle, c.experts, c.hidden, D, c.out, options.sleep === true)
    } catch (e) {
      throw wrap(e)
    }
  }

  /** Frees the device cache, unregisters the arena and closes the device. Idempotent. */
  close(): void {
    if (this.#closed) return
    this.#closed = true
    if (this.#arenaView) call(() => native().gpuUnregisterHost(this.handle, this.#arenaView!))
    call(() => native().gpuClose(this.handle))
  }
}
