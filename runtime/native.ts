// The one typed contract between the C++/CUDA addon (native/addon/) and TypeScript. Everything
// native is reached through `native()`; nothing else requires the .node file.
import { createRequire } from 'node:module'
import { existsSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { dirname, join, resolve } from 'node:path'
import { HetmoeError } from './errors.js'

export interface NativeCpuIsa {
  avx2: boolean
  fma: boolean
  f16c: boolean
  avx512f: boolean
  avx512bw: boolean
  avx512vl: boolean
  avx512dq: boolean
  avx512bf16: boolean
  amxTile: boolean
  amxBf16: boolean
  /** The OS granted this process AMX tile state (Linux: ARCH_REQ_XCOMP_PERM). */
  amxGranted: boolean
}

export interface NativeGpuDevice {
  index: number
  name: string
  computeCapability: string
  totalBytes: number
  freeBytes: number
  multiprocessors: number
  l2Bytes: number
  sharedPerBlockOptinBytes: number
  sparseTensorCores: boolean
  wgmmaSparse: boolean
}

export interface NativeInfo {
  cpu: { vendor: string; model: string; logicalCores: number; isa: NativeCpuIsa; amxNote?: string }
  gpu: {
    /** The addon was built with the CUDA backend. */
    compiled: boolean
    runtimeVersion: number
    driverVersion: number
    /** Why no GPU is usable; absent when devices were found. */
    error?: string
    devices: NativeGpuDevice[]
  }
}

/** info_bindings.cc */
export interface NativeInfoApi {
  info(): NativeInfo
  /** Address of a typed array's first byte modulo `mod` (default 4096). */
  addressMod(view: ArrayBufferView, mod?: number): number
}

/** weights_bindings.cc: the process-wide registry of memory-mapped weight files. */
export interface NativeWeightsApi {
  /** Maps a file read-only; mapping the same path again returns the same id (reference counted). */
  mapWeights(path: string, populate?: boolean): { id: number; bytes: number }
  unmapWeights(id: number): void
  /** Zero-copy view of mapped bytes (a copy where the embedder refuses external buffers). */
  weightsView(id: number, offset: number, length: number): ArrayBuffer
}

/** A CPU kernel level (native/cpu/kernels.h). */
export type CpuIsa = 'scalar' | 'avx2' | 'avx512' | 'avx512bf16' | 'amx'

/** cpu_bindings.cc: CPU expert kernels and the per-layer CPU job (native/cpu/layer_job.h). */
export interface NativeCpuApi {
  /** The kernel levels, which this CPU runs (and what it lacks for the others), and the best one. */
  cpuIsa(): { best: CpuIsa; levels: Array<{ name: CpuIsa; available: boolean; missing?: string }> }
  /** The level a job uses for `name` ('' or undefined: HETMOE_ISA, else the best); throws naming what the CPU lacks. */
  cpuResolveIsa(name?: string): { name: CpuIsa; index: number }
  /**
   * Joins the layer job whose descriptor is at `descOffset` (bytes) in the arena and runs blocks on this thread
   * until none is left. `testHooks` honours the descriptor's dieCount (HETMOE_TEST_HOOKS=1 only): status 'die'
   * means the caller must exit holding a claimed block.
   */
  cpuLayerRun(arena: Uint8Array, descOffset: number, testHooks?: boolean): { status: 'done' | 'aborted' | 'die'; blocks: number }
  /** Claimed-but-not-done blocks back to free, claim counter and abort flag cleared; `full` resets done blocks too. */
  cpuLayerReset(arena: Uint8Array, descOffset: number, full?: boolean): void
  /** Waits on this thread, spinning at most `micros`, for every block done ('done'), an abort ('aborted'), else 'pending'. */
  cpuLayerWaitSpin(arena: Uint8Array, descOffset: number, micros: number): 'done' | 'aborted' | 'pending'
  /** Waits on a libuv pool thread (the event loop goes on) for every block done or an abort. */
  cpuLayerWait(arena: Uint8Array, descOffset: number): Promise<'done' | 'aborted'>
  /** The crew's board (native/cpu/crew.h): format it for `slots` workers at a 64-byte aligned offset. */
  crewInit(arena: Uint8Array, board: number, slots: number): void
  /** How long idle workers of the first `spinWorkers` slots spin before they sleep: `spinMicros` ≥ 0 that long, < 0 adaptive up to `spinMaxMicros` (native/cpu/crew.cc); the others sleep at once. */
  crewConfigure(arena: Uint8Array, board: number, spinMicros: number, spinMaxMicros: number, spinWorkers: number): void
  /** A job is on its way: wakes up to `count` sleeping workers (which wake more) to spin for it; returns how many it woke. */
  crewAlert(arena: Uint8Array, board: number, count: number): number
  /** Diagnostics: record the timings of every crewJoin (off by default). */
  crewTrace(on: boolean): void
  /** The last crewJoin's trace (out: 12 values): [posted, mainDone, waited, retired] µs after its start, mainBlocks, numBlocks, sleepersAtPost, woken, entered, joins traced so far, the lazy wake's estimates of a woken worker's arrival and of the waker's cost per worker (µs). */
  crewLastJoin(out: Float64Array): Float64Array
  /** Worker side: serve posted jobs as worker `slot` until crewQuit ('quit'), a test-hook death ('die') or `idleMicros` without a job ('idle'). Blocks. */
  crewServe(arena: Uint8Array, board: number, slot: number, idleMicros: number, testHooks?: boolean): 'quit' | 'die' | 'idle'
  /** Validates the job descriptor (throws naming what is wrong) and opens it to the crew; one job at a time. */
  crewPost(arena: Uint8Array, board: number, descOffset: number): void
  /**
   * Runs the layer job on this thread and the crew, then waits up to `spinMicros` for the workers' last
   * blocks and retires it within `retireMicros` (native/cpu/crew.h). Mode 'alone': this thread only, nothing
   * posted; 'lazy': sleeping workers are woken only if this thread finds more work left than a wake-up
   * costs; 'wake': woken at once. Returns 'done' (finished, retired), 'unretired' (finished; call crewRetire),
   * 'pending' (workers still run blocks), 'aborted' (abort seen or a block failed; retire first). Throws,
   * posting nothing, for a bad descriptor.
   */
  crewJoin(arena: Uint8Array, board: number, descOffset: number, mode: 'alone' | 'lazy' | 'wake', spinMicros: number, retireMicros: number): 'done' | 'unretired' | 'pending' | 'aborted'
  /**
   * Runs the gate job at `descOffset` (native/cpu/gate_job.h) on this thread and the crew: posts it,
   * computes blocks, waits for all of them and for every worker to leave. The board must be free.
   * Returns -1; the index of the first non-finite hidden value; -3 (GATE_WEIGHT_NOT_FINITE) when the hidden
   * states are finite and a gate weight is not; -2 when a worker died inside the job (the logits are
   * incomplete; the other workers have left, the board is free).
   */
  gateJobRun(arena: Uint8Array, board: number, descOffset: number): number
  /** Closes the posted job; true once no worker is inside it (spins at most `micros`; call again while false). */
  crewRetire(arena: Uint8Array, board: number, micros: number): boolean
  /** Asks every serving worker to return. */
  crewQuit(arena: Uint8Array, board: number): void
  /** Runs the job `iters` times on `threads` native threads (full reset before each); seconds per run. */
  cpuBenchLayer(arena: Uint8Array, descOffset: number, threads: number, iters: number): Float64Array
  /** Streaming read of `bytes` with `threads` threads, `iters` passes; GB/s per pass. */
  cpuReadBandwidth(bytes: number, threads: number, iters: number): Float64Array
  /** Random layout contents for benches: weights ('bf16' | 'fp32'), valid 2:4 'meta' words, 75% 'select' bytes. */
  cpuFillRandom(view: Uint8Array, kind: 'bf16' | 'fp32' | 'meta' | 'select', seed: number): void
}

/** A matrix as gpuUpload reads it: the manifest's MatrixRef (byte ranges into the mapped weights file). */
export interface NativeGpuMatrix {
  rows: number
  cols: number
  format: 'dense' | '2:4' | '75%'
  dtype: 'bf16' | 'fp32'
  values: { offset: number; bytes: number }
  meta?: { offset: number; bytes: number }
  select?: { offset: number; bytes: number }
}

/** What a GPU layer call measured (GpuLayerTiming in runtime/gpu-backend.ts documents each field). */
export interface NativeGpuLayerTiming {
  gpuMs: number
  kernelMs: number
  copyInMs: number
  staged: boolean
  hostMs: number
  prepMs: number
}

/** One expert's selections for gpuRunLayer: out[outRows[i]] = (scale?.[i] ?? 1) * FFN(hidden[tokenRows[i]]). */
export interface NativeGpuLayerExpert {
  key: string
  tokenRows: Int32Array
  outRows: Int32Array
  scale?: Float32Array
}

export interface NativeGpuResident {
  key: string
  ffn: 'swiglu' | 'gelu'
  format: 'dense' | '2:4' | '75%'
  D: number
  F: number
  bytes: number
}

/**
 * gpu_bindings.cc: the device expert cache and the sparse-sparse expert kernels (native/cuda/).
 * Errors carry `code`: 'GPU_OOM' (device allocation failed or the cache budget is full) or
 * 'GPU_ERROR' (any other CUDA error; the message names the CUDA error and what was being done).
 * Built without CUDA, every function but gpuAvailable throws a GPU_ERROR saying so.
 */
export interface NativeGpuApi {
  /** Whether a device with sparse tensor cores (sm_80+) can be used, and why not. Never throws. */
  gpuAvailable(): { available: boolean; reason?: string }
  /** Opens a device: a stream, events and an expert cache of `budgetBytes` (0: 80% of free memory). */
  gpuOpen(device?: number, budgetBytes?: number): number
  gpuClose(handle: number): void
  gpuDeviceName(handle: number): string
  /**
   * Copies one expert from the mapped weights file (`weightsId` from mapWeights) to the device and
   * repacks it into the kernel's layout; replaces an expert of the same key. All matrices of an
   * expert share one format; gate/up are [F x D], down [D x F]; SwiGLU needs `gate`, GeLU has none.
   * GPU shape limits: cols % 64 == 0, rows % 16 == 0 (75%: % 32). Returns the device bytes it uses.
   */
  gpuUpload(
    handle: number,
    key: string,
    weightsId: number,
    ffn: 'swiglu' | 'gelu',
    expert: { gate?: NativeGpuMatrix; up: NativeGpuMatrix; down: NativeGpuMatrix },
  ): number
  /**
   * gpuUpload on a libuv thread: resolves with the device bytes once the expert is resident. Its bytes
   * count against the budget from the call on (bytesUsed includes them; GPU_OOM when they do not fit).
   * Uploads run one at a time (each waits for the one before it on its libuv thread: queue them
   * in JavaScript, as GpuBackend does), on a stream of their own, through pinned staging; layer calls,
   * evict, resident and bytesUsed go on meanwhile. The weights file stays mapped until it settles.
   */
  gpuUploadAsync(
    handle: number,
    key: string,
    weightsId: number,
    ffn: 'swiglu' | 'gelu',
    expert: { gate?: NativeGpuMatrix; up: NativeGpuMatrix; down: NativeGpuMatrix },
  ): Promise<number>
  /** Drops an expert; its memory is freed after the layer calls already running (never waits). */
  gpuEvict(handle: number, key: string): boolean
  gpuResident(handle: number, key: string): boolean
  gpuBytesUsed(handle: number): number
  gpuBudget(handle: number): number
  /** Tokens of a layer call's busiest expert from which its group runs the large-batch kernel (sm_90a,
   *  HETMOE_WGMMA / HETMOE_WGMMA_MIN); 0: never on this device. */
  gpuLargeBatchMinTokens(handle: number): number
  gpuResidentExperts(handle: number): NativeGpuResident[]
  /** cudaHostRegister (mapped) of the view's bytes; '' on success, else the reason (copies then stage). */
  gpuRegisterHost(handle: number, view: Uint8Array): string
  gpuUnregisterHost(handle: number, view: Uint8Array): void
  /**
   * Runs every listed expert (all resident) on a libuv thread: hidden [T x D] fp32 in, `out` rows
   * named by outRows overwritten (fp32), nothing else written. hidden/out inside a registered range
   * (16-byte aligned) move by DMA / zero-copy, otherwise through a pinned staging buffer.
   * Resolves with the stream time of the call and of its kernels, and the native thread's wall time.
   * `sleepWait`: that thread sleeps until the device is done rather than spinning (a call beside CPU work).
   */
  gpuRunLayer(handle: number, experts: NativeGpuLayerExpert[], hidden: Float32Array, D: number, out: Float32Array, sleepWait?: boolean): Promise<NativeGpuLayerTiming>
  /** gpuRunLayer on the calling thread, which waits (spinning) for the stream: for decode-size calls. */
  gpuRunLayerSync(handle: number, experts: NativeGpuLayerExpert[], hidden: Float32Array, D: number, out: Float32Array, sleepWait?: boolean): NativeGpuLayerTiming
  /** The GPU bench (native/cuda/gpu_bench.cu), synchronous; returns its results as JSON text. */
  gpuBench(options: {
    preset?: string
    E?: number
    D?: number
    F?: number
    topK?: number
    tokensPerExpert?: number[]
    formats?: string[]
    baselines?: boolean
    minReps?: number
    seconds?: number
    device?: number
  }): string
}

/** The per-layer arithmetic around the experts (native/cpu/router_math.h). */
export interface NativeRouterApi {
  /**
   * Gate logits in float64, the same bits as scheduler/route-gate.ts computes them (on every ISA):
   * logits[t·E + e] = W[e] · x[t]. Returns -1, the index of the first non-finite hidden value, or -3
   * (GATE_WEIGHT_NOT_FINITE) when the hidden states are finite and a gate weight is not. Checked on the
   * logits, not the hidden states (native/cpu/router_math.h: checkLogits).
   */
  gateLogits(hidden: Float32Array, weight: Float32Array, T: number, D: number, E: number, logits: Float64Array): number
  /**
   * The top-k selection of T tokens' finite gate logits (float64 [T × E]) into the selection arrays
   * (scheduler/selection.ts): the same experts, order and weight bits as GateRouter.routeLogits
   * (native/cpu/gate_select.h). Returns T·K.
   */
  gateSelect(logits: Float64Array, T: number, E: number, K: number, normalize: boolean, counts: Int32Array, offsets: Int32Array, tokenRows: Int32Array, outRows: Int32Array, scales: Float32Array): number
  /** out[i] = exp(x[i]) by fdlibm's algorithm, as gateSelect computes it, at a kernel level (default: HETMOE_ISA or the best); tests: the same doubles as Math.exp. */
  fdlibmExp(x: Float64Array, out: Float64Array, isa?: string): void
  /** Index of the first NaN or ±Inf among x[0..n), else -1. */
  firstNonFinite(x: Float32Array, n: number): number
  /** The fewest values firstNonFinite shares with its thread pool, whose threads sleep between scans (0: never). */
  scanPoolMinFloats(): number
  /** out[t] = Σ_k rows[t·K + k] (+ g[t] · Σ_s shared[s·T + t]), fp32, in that fixed order. */
  combineRows(rows: Float32Array, shared: Float32Array | null, S: number, out: Float32Array, T: number, K: number, D: number, g?: Float32Array | null): void
  /**
   * The same sums computed by this thread and the crew on `board` (its descriptor written at
   * `descOffset`, GATE_WORDS words), in blocks of `tokensPerBlock` tokens; the board must be free.
   * -1 when `out` holds them; -2 when a worker died inside the job (some rows not summed, the board
   * free). `dieCount`: the test hook of native/cpu/gate_job.h's word 12.
   */
  combineJobRun(arena: Uint8Array, board: number, descOffset: number, rows: Float32Array, shared: Float32Array | null, S: number, out: Float32Array, T: number, K: number, D: number, g: Float32Array | null, tokensPerBlock: number, dieCount: number): number
}

export interface NativeAddon extends NativeInfoApi, NativeWeightsApi, NativeCpuApi, NativeGpuApi, NativeRouterApi {}

const here = dirname(fileURLToPath(import.meta.url))
/** The package root: this file runs from dist/runtime/. */
export const packageRoot = resolve(here, '..', '..')

let cached: NativeAddon | undefined

/** Loads the addon once per thread (each worker thread gets its own exports object). */
export function native(): NativeAddon {
  if (cached) return cached
  const path = process.env.HETMOE_ADDON ?? join(packageRoot, 'build', 'Release', 'hetmoe.node')
  if (!existsSync(path)) {
    throw new HetmoeError(
      'ADDON_MISSING',
      `hetmoe's native addon is not built (looked for ${path}); run \`npm run build:native\` ` +
        '(HETMOE_CUDA=off for a CPU-only build)',
    )
  }
  const require = createRequire(import.meta.url)
  cached = require(path) as NativeAddon
  return cached
}
