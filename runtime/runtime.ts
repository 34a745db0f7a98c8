// The runtime: what a Node inference app embeds. One forward() runs one MoE layer over a batch:
// route → split the active experts between the GPU (resident hot experts) and the CPU pool → run
// both at once → combine, with every activation in the shared arena.
import { EventEmitter } from 'node:events'
import { Arena, type Lease } from './arena.js'
import { CpuCrew, idleSpinSetting, type IdleSpin } from './cpu-crew.js'
import { HetmoeError, badOption } from './errors.js'
import { envConfig } from './config.js'
import { combineTopK, copyRows, sharedGate } from './combine.js'
import type { ExpertBackend, ExpertWork, LayerWork } from './layer-work.js'
import type { ModelManifest } from '../experts/manifest.js'
import { routeLayer, rreCounts, type Selection } from './route-layer.js'
import { CpuBackend } from './cpu-backend.js'
import { openGpu, type GpuExpertBackend } from './gpu-open.js'
import type { Model } from '../experts/model.js'
import { GpuExpertCache, GPU_STRATEGIES, type GpuBatchChoice, type GpuStrategy } from './gpu-cache.js'
import { machineCalibration } from './placement.js'
import { CostModel, type Calibration } from '../scheduler/cost-model.js'
import { Replacement, replaceOptions, type ReplaceOptions } from './replacement.js'

export interface RuntimeOptions {
  /** The model, from loadModel(). */
  model: Model
  /** 'auto' uses GPU 0 when one is usable and falls back to CPU-only with one warning; 'off' never
   *  uses a GPU; a number picks that device and fails if it is unusable. Defaults to 'auto'. */
  gpu?: 'auto' | 'off' | number
  /** GPU memory for resident experts: bytes or a size such as '20GiB'. Defaults to 80% of the free memory. */
  gpuMemory?: number | string
  /** CPU worker threads. Defaults to the logical cores (HETMOE_CPU_THREADS). */
  cpuThreads?: number
  /** How long an idle CPU worker keeps spinning for the next layer's job before it sleeps, in µs
   *  (spinning yields the core to any other thread that wants it). 'adaptive' (default): 1.5 × the
   *  longest gap between jobs the worker saw lately, at least 100 and at most cpuIdleSpinMaxUs, so
   *  a decode loop with other work between its MoE layers finds the workers awake, and an idle app's
   *  workers spin at most that bound after its last job. A number: that long always (0: sleep at
   *  once). HETMOE_CREW_IDLE_SPIN_US overrides it (measurements). */
  cpuIdleSpinUs?: 'adaptive' | number
  /** The adaptive spin's bound, µs (default 2000; HETMOE_CREW_IDLE_SPIN_MAX_US overrides it). */
  cpuIdleSpinMaxUs?: number
  /** Which experts are GPU-resident, per layer (from `hetmoe place` or planPlacement()). Defaults to
   *  a plan made at start from the model's routing (uniform tokens for RRE, equal gate load). */
  plan?: PlacementPlan
  /** Shared-memory arena size in bytes. Defaults to HETMOE_ARENA_MB (256 MiB). */
  arenaBytes?: number
  /** How the GPU's share of each batch is chosen: 'hetmoe' (default: the plan's experts resident,
   *  cold experts streamed in when the cost model says it pays), or a rule other systems use, for
   *  comparison: 'on-demand-lru', 'fiddler-rule', 'stream-at-32' (see runtime/gpu-cache.ts). */
  strategy?: GpuStrategy
  /** Re-placement (the 'hetmoe' strategy): the runtime tracks each layer's observed expert load and,
   *  when it drifts from the load the placement was planned for, moves experts between the GPU and
   *  the CPU in the background (evictions first, then uploads one at a time, off the JavaScript
   *  thread) while forwards go on; each applied re-placement emits 'replace' (a ReplaceEvent).
   *  Defaults to on; `false` turns it off; an object tunes it: { halfLifeTokens (4096), driftThreshold
   *  (0.1), minGain (0.02), checkEveryTokens (halfLifeTokens / 4) } (runtime/replacement.ts). */
  replace?: boolean | ReplaceOptions
  /** @internal For fault-injection tests: use this GPU backend instead of opening a device. */
  _gpuBackend?: GpuExpertBackend
  /** @internal For tests: the cost model's calibration (otherwise this machine's; none with _gpuBackend). */
  _calibration?: Calibration
  /** @internal Overrides HETMOE_GPU_INLINE_PREFILL (the calibration's probe of an off-thread call). */
  _gpuInlinePrefill?: boolean
}

export interface PlacementPlan {
  layers: { layer: number; gpuExperts: number[] }[]
  /** [layer][expert] share of tokens routed to each expert that the plan assumed (re-placement
   *  measures drift from it). Defaults to an even load, as planForModel assumes without tokens. */
  share?: number[][]
  /** Tokens per forward the plan was made for. Defaults to 1 (decode). */
  batchTokens?: number
  /** GPU bytes the plan left free for streaming (re-placement keeps them free). */
  streamBytes?: number
}

export interface ForwardOptions {
  /** Token ids of the batch, int32 [T]: RRE routing reads them; gated routing ignores them. */
  tokenIds?: Int32Array
  /** RRE domain: a name from the model or an index. */
  domain?: string | number
  /** Cancels between stages; the forward rejects with code 'ABORTED'. */
  signal?: AbortSignal
  /** Where to write the output (T × D fp32); a new Float32Array otherwise. */
  out?: Float32Array
}

export interface LayerStats {
  forwards: number
  tokens: number
  gpuRows: number
  cpuRows: number
  /** Experts run on each side, summed over forwards. */
  gpuExperts: number
  cpuExperts: number
  /** Milliseconds, summed over forwards: the stages, and within compute each side from its dispatch
   *  to its completion (they overlap; a side's time counts only in forwards where it had work);
   *  gpuStream / gpuKernel / gpuCopyIn: the device's event timings of its layer calls (copies in,
   *  kernels, copies out / the expert kernels alone / the copies in alone); gpuHost: those calls' wall
   *  time on their native thread; gpuPlace: choosing the GPU's experts for the batch (the cache
   *  strategy, with the other strategies' synchronous copies; hetmoe's streaming copies run beside the
   *  CPU and count in the GPU side). */
  ms: { route: number; compute: number; combine: number; total: number; cpu: number; gpu: number; gpuStream: number; gpuKernel: number; gpuCopyIn: number; gpuHost: number; gpuPlace: number }
  /** Forwards in which the CPU side, and the GPU side, had work. */
  cpuForwards: number
  gpuForwards: number
  /** GPU layer calls whose hidden or output rows had to go through a pinned staging buffer
   *  (not DMA-able in place: unregistered arena, or a misaligned view). */
  gpuStagedCalls: number
}

/** Waits for every job (none is left running on shared buffers), then throws the first failure. */
async function settleAll(jobs: Promise<unknown>[]): Promise<void> {
  const failed = (await Promise.allSettled(jobs)).find((s): s is PromiseRejectedResult => s.status === 'rejected')
  if (failed) throw failed.reason
}

/** How the two sides of a layer share the CPU's cores when both have work. At prefill sizes (a batch of
 *  more than the GPU's inline rows) the CPU job runs on the workers alone and the GPU call's libuv thread
 *  sleeps until the device is done, so no extra thread competes with the workers for a core: sigma-lite's
 *  4096-token layers with a 25% budget (a small CPU side beside a long GPU call) ran at 237k tokens/s
 *  that way, 183-199k with the calling thread joining the job and the wait spinning, 187-212k with one
 *  of the two (H200 host, call 7); the 10% plan's long CPU side did not mind (call 4). At decode sizes
 *  the calling thread joins (a job of microseconds would wait longer for its wake-up) and the wait
 *  spins. HETMOE_CPU_JOIN_BESIDE_GPU and HETMOE_GPU_SLEEP_BESIDE_CPU (0 or 1) force either. */
function sidesBeside(prefill: boolean): { join: boolean; sleep: boolean } {
  const join = process.env.HETMOE_CPU_JOIN_BESIDE_GPU
  const sleep = process.env.HETMOE_GPU_SLEEP_BESIDE_CPU
  return { join: join === '1' || (join !== '0' && !prefill), sleep: sleep === '1' || (sleep !== '0' && prefill) }
}
const SIDES = { decode: sidesBeside(false), prefill: sidesBeside(true) }

/** HETMOE_PREFETCH=0 (measurements): no lookahead copies for the next layer (GpuExpertCache.prefetch). */
const PREFETCH = process.env.HETMOE_PREFETCH !== '0'
/** Batches smaller than this look no layer ahead: a streamed copy costs milliseconds and an expert's CPU
 *  time at decode tens of µs, so nothing would be streamed, and decode forwards keep the few µs. */
const PREFETCH_MIN_TOKENS = 32

export interface RuntimeStats {
  layers: LayerStats[]
  gpu: {
    enabled: boolean
    healthy: boolean
    device?: string
    residentExperts: number
    residentBytes: number
    failures: number
    strategy: GpuStrategy | null
    /** Expert copies to the GPU after start (streaming, lookahead and cache misses), and evictions. */
    uploads: number
    /** Lookahead prefetches started (RRE: the next layer's streamed experts, copied in early). */
    prefetches: number
    evictions: number
    /** Re-placements applied, the experts they copied in and dropped, and whether one is under way. */
    replacements: number
    expertsMovedIn: number
    expertsMovedOut: number
    replacing: boolean
  }
  cpuThreads: number
  arena: { bytes: number; leasedBytes: number }
}

const GPU_FAILURES_BEFORE_UNHEALTHY = 3

export class Runtime extends EventEmitter {
  readonly model: Model
  readonly #manifest: ModelManifest
  readonly #arena: Arena
  readonly #crew: CpuCrew
  readonly #cpu: CpuBackend
  readonly #gpu: GpuExpertBackend | undefined
  readonly #cache: GpuExpertCache | undefined
  readonly #stats: LayerStats[]
  #replacement: Replacement | undefined
  /** GPU calls with at most this many rows and no CPU work beside them run on this thread (decode,
   *  small batches: calls well under 1 ms); see GpuBackend.runLayer's `inline`. */
  readonly #inlineRows = envConfig().gpuInlineRows
  /** Larger GPU calls run on this thread too where it would only wait (config.ts: gpuInlinePrefill). */
  #inlinePrefill = envConfig().gpuInlinePrefill
  #gpuFailures = 0
  #gpuHealthy = true
  #closed = false
  /** Forwards started and not yet finished (a prefill call inline holds the event loop only while
   *  no other forward could use it). */
  #inFlight = 0

  private constructor(model: Model, arena: Arena, crew: CpuCrew, gpu: GpuExpertBackend | undefined, cache: GpuExpertCache | undefined) {
    super()
    this.model = model
    this.#manifest = model.manifest
    this.#arena = arena
    this.#crew = crew
    this.#cpu = new CpuBackend(crew, arena, model)
    this.#gpu = gpu
    this.#cache = cache
    this.#stats = this.#manifest.layers.map(() => ({ forwards: 0, tokens: 0, gpuRows: 0, cpuRows: 0, gpuExperts: 0, cpuExperts: 0, cpuForwards: 0, gpuForwards: 0, gpuStagedCalls: 0, ms: { route: 0, compute: 0, combine: 0, total: 0, cpu: 0, gpu: 0, gpuStream: 0, gpuKernel: 0, gpuCopyIn: 0, gpuHost: 0, gpuPlace: 0 } }))
  }

  /** @internal use createRuntime() */
  static async _create(options: RuntimeOptions): Promise<Runtime> {
    const env = envConfig()
    const model = options?.model
    if (!model || typeof model !== 'object' || !('manifest' in model)) throw badOption('model', 'a model from loadModel()', model)
    const threads = options.cpuThreads ?? env.cpuThreads
    if (!Number.isInteger(threads) || threads <= 0) throw badOption('cpuThreads', 'a positive integer', threads)
    const arenaBytes = options.arenaBytes ?? env.arenaMiB * 2 ** 20
    if (!Number.isSafeInteger(arenaBytes) || arenaBytes <= 0) throw badOption('arenaBytes', 'a positive integer', arenaBytes)
    const gpuSetting = options.gpu ?? 'auto'
    if (!(gpuSetting === 'auto' || gpuSetting === 'off' || (Number.isInteger(gpuSetting) && (gpuSetting as number) >= 0)))
      throw badOption('gpu', "'auto', 'off' or a device index", gpuSetting)
    if (options.plan) validatePlan(options.plan, model.manifest)
    const replace = replaceOptions(options.replace)
    const spin = { idleSpinUs: options.cpuIdleSpinUs as IdleSpin | undefined, idleSpinMaxUs: options.cpuIdleSpinMaxUs }
    idleSpinSetting(spin) // validated before anything is allocated

    const arena = new Arena({ bytes: arenaBytes })
    const crew = new CpuCrew({ arena, threads, ...spin })
    const warnings: string[] = []
    const strategy = options.strategy ?? 'hetmoe'
    if (!GPU_STRATEGIES.includes(strategy)) throw badOption('strategy', GPU_STRATEGIES.map((s) => `'${s}'`).join(', '), strategy)
    let gpu: GpuExpertBackend | undefined
    let cache: GpuExpertCache | undefined
    let cost: CostModel | undefined
    try {
      gpu = options._gpuBackend ?? (await openGpu({ setting: gpuSetting, gpuMemory: options.gpuMemory, arena, model, plan: options.plan, warn: (m) => warnings.push(m) }))
      if (gpu && strategy === 'hetmoe' && (options._calibration || !options._gpuBackend)) cost = new CostModel(options._calibration ?? (await machineCalibration()))
      if (gpu) cache = new GpuExpertCache(gpu, model, strategy, cost)
    } catch (err) {
      await gpu?.close()
      await crew.destroy()
      arena.close()
      throw err
    }
    const rt = new Runtime(model, arena, crew, gpu, cache)
    if (options._gpuInlinePrefill !== undefined) rt.#inlinePrefill = options._gpuInlinePrefill
    if (gpu && cache && cost && replace)
      rt.#replacement = new Replacement({
        model, cache, cost, budgetBytes: gpu.budgetBytes, plan: options.plan ?? gpu.plan, options: replace,
        onReplace: (e) => rt.emit('replace', e),
        onWarning: (w) => rt.emit('warning', w),
      })
    // Emitted after construction so that listeners attached right after createRuntime() see them.
    if (warnings.length) setImmediate(() => warnings.forEach((w) => rt.emit('warning', w)))
    return rt
  }

  /** Runs MoE layer `layer` on hidden states [T × D] (Float32Array, or bf16 bits as Uint16Array). */
  async forward(layer: number, hidden: Float32Array | Uint16Array, options: ForwardOptions = {}): Promise<Float32Array> {
    if (this.#closed) throw new HetmoeError('POOL_CLOSED', 'this runtime was closed')
    const m = this.#manifest
    const t0 = performance.now()
    if (!Number.isInteger(layer) || layer < 0 || layer >= m.layers.length)
      throw new HetmoeError('BAD_INPUT', `layer must be an integer in [0, ${m.layers.length}) (got ${layer})`)
    const D = m.hiddenSize
    if (!(hidden instanceof Float32Array || hidden instanceof Uint16Array))
      throw new HetmoeError('BAD_INPUT', 'hidden must be a Float32Array (fp32) or a Uint16Array (bf16 bits) of T × D values')
    if (hidden.length === 0 || hidden.length % D !== 0)
      throw new HetmoeError('BAD_INPUT', `hidden has ${hidden.length} values, not a positive multiple of the model's hidden size ${D}`)
    const T = hidden.length / D
    if (options.out && (!(options.out instanceof Float32Array) || options.out.length !== T * D))
      throw new HetmoeError('BAD_INPUT', `options.out must be a Float32Array of ${T * D} values`)
    throwIfAborted(options.signal)
    // HETMOE_CREW_EARLY_WAKE (measurements): sleeping workers start waking while this forward routes.
    this.#crew.alert()

    const routing = m.layers[layer].routing
    const K = routing.kind === 'gate' ? routing.topK : 1
    const shared = m.layers[layer].sharedExperts.length
    const leases: Lease[] = []
    const releases: (() => void)[] = []
    let done = false
    const lease = (bytes: number) => {
      const l = this.#arena.lease(bytes)
      leases.push(l)
      return l
    }
    this.#inFlight++
    try {
      // Inputs already in the arena (fp32, 4-byte aligned) are used in place; others are copied in once.
      let hiddenOffset: number
      let h: Float32Array
      if (hidden instanceof Float32Array && hidden.buffer === this.#arena.buffer) {
        hiddenOffset = hidden.byteOffset
        h = hidden
      } else {
        const hiddenLease = lease(T * D * 4)
        hiddenOffset = hiddenLease.offset
        h = hiddenLease.f32(T * D)
        if (hidden instanceof Float32Array) copyRows(h, hidden, T, D, this.#crew)
        else bf16ToF32InPlace(h, hidden)
      }

      // Route (validates token ids, domain and finiteness before any work).
      const sel: Selection = routeLayer(this.model, layer, h, T, options, lease)
      const tRoute = performance.now()

      // Expert outputs: top-1 without shared experts writes straight into the output rows, and into
      // options.out itself when that is an arena view (aligned for DMA, not overlapping the hidden
      // states: CPU blocks read other tokens' hidden rows while they write theirs).
      const direct = K === 1 && shared === 0
      const o = options.out
      const outInPlace =
        direct && o !== undefined && o.buffer === this.#arena.buffer && o.byteOffset % 16 === 0 &&
        (o.byteOffset >= hiddenOffset + T * D * 4 || o.byteOffset + T * D * 4 <= hiddenOffset)
      const rowsOffset = outInPlace ? o.byteOffset : lease(T * K * D * 4).offset
      const rowsF32 = () => new Float32Array(this.#arena.buffer, rowsOffset, T * K * D)
      const sharedLease = shared ? lease(shared * T * D * 4) : undefined
      const identity = shared ? lease(T * 4) : undefined
      if (identity) identity.i32(T).forEach((_, i, a) => (a[i] = i))

      const gpuWork: ExpertWork[] = []
      const cpuWork: ExpertWork[] = []
      const streamWork: ExpertWork[] = [] // cold experts whose weights are being copied in for this batch
      let choice: GpuBatchChoice | undefined
      if (this.#gpu && this.#gpuHealthy) {
        const tPlace = performance.now()
        choice = this.#cache!.choose(layer, sel.counts, T)
        this.#stats[layer].ms.gpuPlace += performance.now() - tPlace
      }
      if (choice) releases.push(choice.release)
      if (choice) this.#replacement?.observe(layer, sel.counts, T)
      const { counts, offsets, scalesOffset } = sel
      for (let e = 0; e < counts.length; e++) {
        const count = counts[e]
        if (count === 0) continue
        const w: ExpertWork = {
          expert: e,
          count,
          tokens: sel.tokenRowsOffset + 4 * offsets[e],
          outRows: sel.outRowsOffset + 4 * offsets[e],
          scales: scalesOffset !== undefined ? scalesOffset + 4 * offsets[e] : undefined,
        }
        ;(choice?.onGpu.has(e) ? gpuWork : choice?.streaming.includes(e) ? streamWork : cpuWork).push(w)
      }
      // Shared experts see every token and write block s of the shared output.
      const sharedWorks: ExpertWork[] = []
      for (let s = 0; s < shared; s++)
        sharedWorks.push({ expert: s, shared: true, count: T, tokens: identity!.offset, outRows: identity!.offset })
      const hiddenRef = { offset: hiddenOffset, rows: T }
      const outRef = { offset: rowsOffset, rows: T * K }
      const jobs: Promise<void>[] = []
      const cpuJob: LayerWork = { layer, hidden: hiddenRef, out: outRef, experts: cpuWork }
      const gpuJob: LayerWork = { layer, hidden: hiddenRef, out: outRef, experts: gpuWork }
      // Inline, this thread makes the GPU call itself and waits for the device: where it has nothing
      // else to do, a hop to a libuv thread and back costs more than the wait saves (gpu-backend.ts:
      // runLayer). That is a call with no CPU work beside it and few rows (decode); with
      // HETMOE_GPU_INLINE_PREFILL also any call with no CPU work, or beside CPU jobs this thread does
      // not join (prefill sizes: sidesBeside), posted before the call, while no other forward is in
      // flight: such a call holds the event loop until the device is done. Otherwise the call goes
      // to a libuv thread, queued before a small CPU job occupies this thread (it joins those).
      let gpuDone = 0
      let cpuDone = 0
      let lateCpuDone = 0
      const lateWork: ExpertWork[] = [] // streamed experts whose copies failed: computed by the CPU after all
      let gpuRows = 0
      for (const w of gpuWork) gpuRows += w.count
      const besideCpu = cpuWork.length > 0 || shared > 0
      const prefill = T > this.#inlineRows
      const sides = prefill ? SIDES.prefill : SIDES.decode
      // undefined: the crew's own rule (the calling thread joins jobs of up to 64 MiB of weights).
      const join = (gpuWork.length > 0 || streamWork.length > 0) && !sides.join ? false : undefined
      const inlineLarge = this.#inlinePrefill && this.#inFlight === 1
      const inline = streamWork.length === 0 && (besideCpu ? inlineLarge && join === false : gpuRows <= this.#inlineRows || inlineLarge)
      if (streamWork.length) {
        // Streaming (prefill): the CPU starts on its share below while the cold experts' weights are
        // copied in; the GPU's call waits for them and takes those that arrived. One whose copy failed
        // runs on the CPU after all, as a job of its own.
        const streamed = choice!.streamed.then(async (arrived) => {
          const late = streamWork.filter((w) => !arrived.has(w.expert))
          lateWork.push(...late)
          for (const w of streamWork) if (arrived.has(w.expert)) (gpuWork.push(w), (gpuRows += w.count))
          const both: Promise<unknown>[] = []
          if (gpuWork.length) both.push(this.#runGpu(gpuJob, options.signal, { inline: false, sleep: (besideCpu || late.length > 0) && sides.sleep }).then(() => void (gpuDone = performance.now())))
          if (late.length) both.push(this.#cpu.run({ layer, hidden: hiddenRef, out: outRef, experts: late }, options.signal, gpuWork.length > 0 && !sides.join ? false : undefined).then(() => void (lateCpuDone = performance.now())))
          await settleAll(both)
        })
        jobs.push(streamed)
      }
      const runGpu = () => jobs.push(this.#runGpu(gpuJob, options.signal, { inline, sleep: besideCpu && sides.sleep }).then(() => void (gpuDone = performance.now())))
      // (A CPU job's post is synchronous; an inline GPU call returns when the device is done.)
      if (gpuWork.length && !streamWork.length && !inline) runGpu()
      const cpuJobs: Promise<unknown>[] = []
      if (cpuWork.length) cpuJobs.push(this.#cpu.run(cpuJob, options.signal, join))
      for (let s = 0; s < shared; s++) {
        const block = { offset: sharedLease!.offset + s * T * D * 4, rows: T }
        cpuJobs.push(this.#cpu.run({ layer, hidden: hiddenRef, out: block, experts: [sharedWorks[s]] }, options.signal, join))
      }
      if (gpuWork.length && !streamWork.length && inline) runGpu()
      if (jobs.length === 0 && cpuJobs.length === 1) {
        // One job alone (CPU-only decode): awaited directly, without the combinators' extra promises.
        await cpuJobs[0]
      } else {
        if (cpuJobs.length) jobs.push(Promise.all(cpuJobs).then(() => void (cpuDone = performance.now())))
        await settleAll(jobs)
      }
      throwIfAborted(options.signal)
      const tCompute = performance.now()
      if (cpuJobs.length && !cpuDone) cpuDone = tCompute // the one CPU job, awaited alone
      if (lateCpuDone) cpuDone = Math.max(cpuDone, lateCpuDone)

      const out = options.out ?? new Float32Array(T * D)
      if (outInPlace) {
        // written by the experts
      } else if (direct) copyRows(out, rowsF32(), T, D, this.#crew)
      else {
        const gate = m.layers[layer].sharedExpertGate
        const scale = gate ? sharedGate(new Float32Array(this.model.view(gate)), h, T, D) : undefined
        combineTopK(rowsF32(), sharedLease?.f32(shared * T * D), shared, out, T, K, D, scale, this.#crew)
      }
      const tEnd = performance.now()

      const st = this.#stats[layer]
      st.forwards++
      st.tokens += T
      st.gpuRows += gpuRows
      st.gpuExperts += gpuWork.length
      st.cpuExperts += cpuWork.length + lateWork.length
      for (const w of cpuWork) st.cpuRows += w.count
      for (const w of lateWork) st.cpuRows += w.count
      st.ms.route += tRoute - t0
      st.ms.compute += tCompute - tRoute
      st.ms.combine += tEnd - tCompute
      st.ms.total += tEnd - t0
      if (gpuDone) (st.gpuForwards++, (st.ms.gpu += gpuDone - tRoute))
      if (cpuDone) (st.cpuForwards++, (st.ms.cpu += cpuDone - tRoute))
      done = true
      return out
    } finally {
      this.#inFlight--
      for (const r of releases) r()
      for (const l of leases) l.release()
      if (done) this.#prefetchNext(layer, options)
    }
  }

  /**
   * Lookahead (RRE): once a forward of `layer` has let go of its streamed experts, the copies its
   * batch will want at the next layer start, to overlap what the app does in between. Any error
   * (the next layer gated, the domain unknown there) only means no prefetch: that forward reports it.
   */
  #prefetchNext(layer: number, options: ForwardOptions): void {
    const next = layer + 1
    if (!PREFETCH || !this.#cache || !this.#gpuHealthy || next >= this.#manifest.layers.length || !options.tokenIds || options.domain === undefined) return
    if (options.tokenIds.length < PREFETCH_MIN_TOKENS || !this.#cache.mayPrefetch(next)) return
    if (options.signal?.aborted) return
    try {
      const counts = rreCounts(this.model, next, options.tokenIds, options.domain)
      if (counts) this.#cache.prefetch(next, counts, options.tokenIds.length)
    } catch {
      // nothing prefetched
    }
  }

  /** GPU experts of one layer; on a GPU failure the same experts rerun on the CPU (same results). */
  async #runGpu(work: LayerWork, signal: AbortSignal | undefined, how: { inline: boolean; sleep: boolean }): Promise<void> {
    try {
      const timing = await this.#gpu!.run(work, signal, how)
      this.#gpuFailures = 0
      if (timing) {
        // The device's own event timings: copies + kernels (stream), and the projection kernels alone.
        const st = this.#stats[work.layer]
        st.ms.gpuStream += timing.gpuMs
        st.ms.gpuKernel += timing.kernelMs
        st.ms.gpuCopyIn += timing.copyInMs
        st.ms.gpuHost += timing.hostMs
        if (timing.staged) st.gpuStagedCalls++
      }
    } catch (err) {
      if (err instanceof HetmoeError && err.code === 'ABORTED') throw err
      this.#gpuFailures++
      const what = err instanceof Error ? err.message : String(err)
      if (this.#gpuFailures >= GPU_FAILURES_BEFORE_UNHEALTHY && this.#gpuHealthy) {
        this.#gpuHealthy = false
        this.emit('warning', `GPU marked unhealthy after ${this.#gpuFailures} failures in a row; running every expert on the CPU from now on (last error: ${what})`)
      } else {
        this.emit('warning', `GPU experts of layer ${work.layer} failed (${what}); rerunning them on the CPU`)
      }
      await this.#cpu.run(work, signal)
    }
  }

  /** The shared-memory arena: lease from it to pass inputs and receive outputs without copies. */
  get arena(): Arena {
    return this.#arena
  }

  stats(): RuntimeStats {
    const residentExperts = this.#cache?.residentCount ?? 0
    return {
      layers: this.#stats.map((s) => ({ ...s, ms: { ...s.ms } })),
      gpu: {
        enabled: this.#gpu !== undefined,
        healthy: this.#gpu !== undefined && this.#gpuHealthy,
        ...(this.#gpu ? { device: this.#gpu.deviceName } : {}),
        residentExperts,
        residentBytes: this.#gpu?.residentBytes() ?? 0,
        failures: this.#gpuFailures,
        strategy: this.#cache?.strategy ?? null,
        uploads: this.#cache?.uploads ?? 0,
        prefetches: this.#cache?.prefetches ?? 0,
        evictions: this.#cache?.evictions ?? 0,
        ...(this.#replacement?.stats() ?? { replacements: 0, expertsMovedIn: 0, expertsMovedOut: 0, replacing: false }),
      },
      cpuThreads: this.#crew.threads,
      arena: { bytes: this.#arena.byteLength, leasedBytes: this.#arena.leasedBytes },
    }
  }

  /** Waits for running forwards' CPU work, then frees the GPU, the workers and the arena. */
  async close(): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    await this.#replacement?.stop()
    await this.#crew.close()
    await this.#gpu?.close()
    this.#arena.close()
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close()
  }
}

/**
 * Arena bytes one forward of `batchTokens` tokens needs at most (hidden copy, routing, expert rows,
 * the CPU job's scratch), with room to spare, and never less than the default: for createRuntime's
 * `arenaBytes` when batches are large (a 4096-token sigma-lite batch needs ~300 MiB).
 */
export function arenaBytesFor(model: Model, batchTokens: number): number {
  const m = model.manifest
  const D = m.hiddenSize
  const rows = m.layers.reduce((mx, l) => Math.max(mx, batchTokens * (l.routing.kind === 'gate' ? l.routing.topK : 1)), 0)
  const F = Math.max(...m.layers.flatMap((l) => [...l.experts, ...l.sharedExperts].map((e) => e.up.rows)))
  const E = Math.max(...m.layers.map((l) => l.experts.length + l.sharedExperts.length))
  const shared = Math.max(...m.layers.map((l) => l.sharedExperts.length))
  const perForward =
    4 * batchTokens * D + // hidden, copied in (or the caller's lease of it)
    4 * batchTokens * D + // the caller's lease for the output
    16 * (E + rows) + // the selection
    4 * (rows + shared * batchTokens) * D + // expert output rows
    4 * (rows + shared * batchTokens) * F + // CPU job: the intermediate activations
    2 * (rows + 32 * E) * (D + F) // CPU job: AMX packing
  return Math.max(envConfig().arenaMiB * 2 ** 20, Math.ceil((1.25 * perForward + (16 << 20)) / 2 ** 20) * 2 ** 20)
}

export function createRuntime(options: RuntimeOptions): Promise<Runtime> {
  return Runtime._create(options)
}

function throwIfAborted(signal?: AbortSignal): void {
  if (signal?.aborted) throw new HetmoeError('ABORTED', `forward aborted: ${signal.reason instanceof Error ? signal.reason.message : String(signal.reason ?? 'aborted')}`)
}

function bf16ToF32InPlace(dst: Float32Array, src: Uint16Array): void {
  const u = new Uint32Array(dst.buffer, dst.byteOffset, dst.length)
  for (let i = 0; i < src.length; i++) u[i] = src[i] << 16
}

function validatePlan(plan: PlacementPlan, m: ModelManifest): void {
  if (!plan || !Array.isArray(plan.layers)) throw badOption('plan', 'a placement plan with layers[]', plan)
  for (const l of plan.layers) {
    if (!Number.isInteger(l.layer) || l.layer < 0 || l.layer >= m.layers.length)
      throw badOption('plan', `layers with layer in [0, ${m.layers.length})`, l.layer)
    for (const e of l.gpuExperts)
      if (!Number.isInteger(e) || e < 0 || e >= m.layers[l.layer].experts.length)
        throw badOption('plan', `expert ids of layer ${l.layer} in [0, ${m.layers[l.layer].experts.length})`, e)
  }
  if (plan.share !== undefined) {
    const ok = Array.isArray(plan.share) && plan.share.length === m.layers.length &&
      plan.share.every((s, l) => Array.isArray(s) && s.length === m.layers[l].experts.length && s.every((x) => typeof x === 'number' && x >= 0 && Number.isFinite(x)))
    if (!ok) throw badOption('plan', 'a plan whose share is [layer][expert] non-negative numbers', 'another share')
  }
  if (plan.batchTokens !== undefined && !(Number.isSafeInteger(plan.batchTokens) && plan.batchTokens > 0))
    throw badOption('plan', 'a plan whose batchTokens is a positive integer', plan.batchTokens)
  if (plan.streamBytes !== undefined && !(Number.isSafeInteger(plan.streamBytes) && plan.streamBytes >= 0))
    throw badOption('plan', 'a plan whose streamBytes is a byte count', plan.streamBytes)
}
