// Calibrating the cost model with the runtime's own backends: the probes run real expert work
// through the CPU worker pool's layer job and (where present) the GPU backend, on a small synthetic
// model per weight format, so the planner predicts what the runtime will actually do. Cached per
// machine (scheduler/calibrate.ts); `hetmoe calibrate` refreshes, `hetmoe info` shows it.
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { Arena, type Lease } from './arena.js'
import { CpuCrew } from './cpu-crew.js'
import { CpuBackend } from './cpu-backend.js'
import { GpuBackend } from './gpu-backend.js'
import { GpuExperts } from './gpu-open.js'
import { envConfig } from './config.js'
import { native } from './native.js'
import type { ExpertBackend, LayerWork } from './layer-work.js'
import { cacheDir } from './model-cache.js'
import { fillRepeating, randomHidden, residualAdd } from './token-stream.js'
import { arenaBytesFor, createRuntime, type Runtime } from './runtime.js'
import { WARMUP } from './stream-runner.js'
import { routeLayer } from './route-layer.js'
import { loadModel, type Model } from '../experts/model.js'
import { synthModel } from '../experts/synth.js'
import { MANIFEST_FILE, type WeightFormat } from '../experts/manifest.js'
import { CostModel, expertShape, type Calibration, type DeviceRates, type FormatKey } from '../scheduler/cost-model.js'
import { calibrationCachePath, fitLine, loadCalibration, readCalibration, referenceH100, thisMachine, type ActivationCosts, type CalibrationProbes, type LayerCallCosts, type Probe } from '../scheduler/calibrate.js'

const FORMATS: WeightFormat[] = ['dense', '2:4', '75%']
const OVERHEAD_RUNS = 300
/** Tiny experts per call in the per-expert overhead probe. */
const TINY_K = 8
// 16 experts of ~48 MB (dense): a window rotating over 768 MB keeps a 300 MB L3 (and the GPU's L2) from
// serving the timed weights.
const EXPERTS = 16
const MAX_TOKENS = 256

/** A one-layer model of EXPERTS SwiGLU experts (2048 × 4096, ~48 MB each dense bf16) in one format. */
async function probeModel(format: WeightFormat): Promise<Model> {
  const dir = join(cacheDir(), 'calibration-models', 'v2-' + format.replace(/[:%]/g, '_'))
  if (!existsSync(join(dir, MANIFEST_FILE)))
    await synthModel({ preset: { name: `calibration-${format}`, layers: 1, hidden: 2048, inner: 4096, ffn: 'swiglu', routing: { kind: 'gate', experts: EXPERTS, topK: 1, normalize: false }, vocabSize: 1000 }, out: dir, format, overwrite: true })
  return loadModel(dir)
}

interface ProbeRig {
  model: Model
  expertBytes: number
  /** LayerWork for k experts (from `first`, wrapping) × n tokens, all in the arena. */
  work(k: number, n: number, first?: number): LayerWork
}

function rig(model: Model, arena: Arena): ProbeRig {
  const D = model.manifest.hiddenSize
  const hidden = arena.lease(MAX_TOKENS * D * 4)
  hidden.f32(MAX_TOKENS * D).set(randomHidden(MAX_TOKENS, D, 5))
  const out = arena.lease(EXPERTS * MAX_TOKENS * D * 4)
  const rows = arena.lease(2 * EXPERTS * MAX_TOKENS * 4)
  const r = rows.i32(2 * EXPERTS * MAX_TOKENS)
  for (let e = 0; e < EXPERTS; e++)
    for (let i = 0; i < MAX_TOKENS; i++) {
      r[e * MAX_TOKENS + i] = i // token rows
      r[(EXPERTS + e) * MAX_TOKENS + i] = e * MAX_TOKENS + i // distinct output rows
    }
  return {
    model,
    expertBytes: expertShape(model.expert(0, 0)).bytes,
    work: (k, n, first = 0) => ({
      layer: 0,
      hidden: { offset: hidden.offset, rows: MAX_TOKENS },
      out: { offset: out.offset, rows: EXPERTS * MAX_TOKENS },
      experts: Array.from({ length: k }, (_, i) => {
        const e = (first + i) % EXPERTS
        return { expert: e, count: n, tokens: rows.offset + 4 * e * MAX_TOKENS, outRows: rows.offset + 4 * (EXPERTS + e) * MAX_TOKENS }
      }),
    }),
  }
}

/** One expert 2048 wide with a 64-row inner layer: its layer calls are all activation copies. */
async function activationModel(): Promise<Model> {
  const dir = join(cacheDir(), 'calibration-models', 'activations-v1')
  if (!existsSync(join(dir, MANIFEST_FILE)))
    await synthModel({ preset: { name: 'calibration-activations', layers: 1, hidden: 2048, inner: 64, ffn: 'swiglu', routing: { kind: 'gate', experts: 1, topK: 1, normalize: false }, vocabSize: 1000 }, out: dir, overwrite: true })
  return loadModel(dir)
}

const ACT_FEW = 512
const ACT_MANY = 4096

/** What a GPU layer call's activation copies cost: bytes per second from the device's stream time for
 *  ACT_MANY vs ACT_FEW rows through an expert with next to no arithmetic (each row is 4·D bytes in
 *  and 4·D out), and what a call of ACT_FEW rows pays more when this thread has just written them (as
 *  a model loop's residual add does between layers) than when they sit untouched: rows still in the
 *  writing core's cache are read by the device at a fraction of the rate (call 6, b6f3551, H100
 *  machine: sigma-lite's 256-token layers copied their 2 MB in in 0.28 ms, where the rate predicted
 *  0.04; bench/layer-probe.ts: 0.08 untouched, 0.17 just written). The rate comes from freshly written
 *  rows too, but the difference of two calls cancels their cached tails, hence the second number. */
function activationProbe(g: GpuExperts, m: Model, arena: Arena): () => Promise<ActivationCosts> {
  const D = m.manifest.hiddenSize
  let lease: { hidden: Float32Array; out: number; rows: number } | undefined
  const source = randomHidden(64, D, 9)
  return async () => {
    if (!lease) {
      const h = arena.lease(ACT_MANY * D * 4)
      const o = arena.lease(ACT_MANY * D * 4)
      const r = arena.lease(ACT_MANY * 4)
      r.i32(ACT_MANY).forEach((_, i, a) => (a[i] = i))
      lease = { hidden: h.f32(ACT_MANY * D), out: o.offset, rows: r.offset }
    }
    const l = lease
    let round = 0
    const call = async (n: number, fresh: boolean) => {
      // Fresh states: every value changes (a scaled copy of 64 random rows, repeated).
      const k = 1 + (++round % 7) / 8
      if (fresh) for (let i = 0; i < n * D; i++) l.hidden[i] = k * source[i % source.length]
      const hidden = { offset: l.hidden.byteOffset, rows: n }
      return (await g.run({ layer: 0, hidden, out: { offset: l.out, rows: n }, experts: [{ expert: 0, count: n, tokens: l.rows, outRows: l.rows }] })).gpuMs / 1000
    }
    g.upload(0, 0)
    try {
      await call(ACT_MANY, true) // warm: scratch buffers sized, pages touched
      const few = await call(ACT_FEW, true)
      const fewAgain = await call(ACT_FEW, false) // the same rows, read by the device once already
      const many = await call(ACT_MANY, true)
      const bytes = (n: number) => 8 * D * n
      const bytesPerS = many > few ? (bytes(ACT_MANY) - bytes(ACT_FEW)) / (many - few) : bytes(ACT_MANY) / many
      return { bytesPerS, freshS: Math.max(0, few - fewAgain), freshRows: ACT_FEW }
    } finally {
      g.evict(0, 0)
    }
  }
}

/** Tokens of the uneven call that measures DeviceRates.serial: its experts get shares of them ∝ 1/(e+1),
 *  Zipf-like, as a prefill batch's experts do. */
const UNEVEN_TOKENS = 4096

/**
 * DeviceRates.serial on the GPU: one call of every expert of the dense probe model with uneven token
 * counts (1212 down to 76 of 4096), its kernels timed by the device's events, against the sum over its
 * experts of the roofline's max(read, arithmetic) at the rates fitted before: what the kernels took
 * beyond that, as a share of the sum of the min(read, arithmetic). (The kernels' fixed cost, charged
 * per layer, counts in it too: a few µs of a call of about a millisecond.)
 */
function serialProbe(g: GpuExperts, m: Model, arena: Arena): (rates: DeviceRates) => Promise<number> {
  const D = m.manifest.hiddenSize
  const E = m.manifest.layers[0].experts.length
  const harmonic = Array.from({ length: E }, (_, e) => 1 / (e + 1)).reduce((a, b) => a + b, 0)
  const counts = Array.from({ length: E }, (_, e) => Math.max(1, Math.round(UNEVEN_TOKENS / (e + 1) / harmonic)))
  const maxN = Math.max(...counts)
  const total = counts.reduce((a, b) => a + b, 0)
  let work: LayerWork | undefined
  return async (rates) => {
    if (!work) {
      const hidden = arena.lease(maxN * D * 4)
      hidden.f32(maxN * D).set(randomHidden(maxN, D, 13))
      const out = arena.lease(total * D * 4)
      const rows = arena.lease(2 * total * 4)
      const r = rows.i32(2 * total)
      let at = 0
      const experts: LayerWork['experts'] = []
      counts.forEach((n, e) => {
        for (let i = 0; i < n; i++) (r[at + i] = i), (r[total + at + i] = at + i)
        experts.push({ expert: e, count: n, tokens: rows.offset + 4 * at, outRows: rows.offset + 4 * (total + at) })
        at += n
      })
      work = { layer: 0, hidden: { offset: hidden.offset, rows: maxN }, out: { offset: out.offset, rows: total }, experts }
    }
    for (let e = 0; e < E; e++) g.upload(0, e)
    try {
      await g.run(work) // warm: scratch sized
      const s = (await g.run(work)).kernelMs / 1000
      const shape = expertShape(m.expert(0, 0))
      const lb = rates.largeBatch && maxN >= rates.largeBatch.minTokens ? rates.largeBatch.readBytesPerS[shape.format] : undefined
      const read = shape.bytes / (lb ?? rates.readBytesPerS[shape.format]!)
      const perToken = shape.flopsPerToken / rates.flopsPerS[shape.format]!
      let longer = 0
      let shorter = 0
      for (const n of counts) (longer += Math.max(read, n * perToken)), (shorter += Math.min(read, n * perToken))
      return shorter > 0 ? (s - longer) / shorter : 0
    } finally {
      for (let e = 0; e < E; e++) g.evict(0, e)
    }
  }
}

interface GpuForwardProbe {
  /** What a GPU layer costs forward() outside its routing and kernels: seconds per layer, and per
   *  expert (decode-size calls); and what is left of calls one row too large to run inline (offThread:
   *  [rows, seconds less the per-expert costs]; empty when every call may run inline). */
  fit(): Promise<{ layerS: number; expertS: number; offThread: [number, number][] }>
  close(): Promise<void>
}

const FORWARD_WARMUP = 50
const FORWARD_RUNS = 250
/** Tokens per probe forward: 1 to 16 experts of the probe model's 16 a forward (top-1, random routes). */
const FORWARD_TOKENS = [1, 2, 4, 8, 16]
const OFF_THREAD_WARMUP = 6
const OFF_THREAD_RUNS = 36

/**
 * The GPU's fixed costs as forward() pays them: a runtime over the dense probe model with all its
 * experts resident, forwards of 1-16 tokens, timed by the runtime's own stage clocks (a forward's total
 * less its routing and its kernels' device time), fitted against the experts each forward ran: the
 * intercept is the per-layer cost, the slope the per-expert one. That covers choosing the experts,
 * building the call, the native call's host work and copies, waiting for the device, and handing the
 * rows back; probes of the backend alone missed 0.1-0.25 ms a layer of them (sigma-lite, d1ee830).
 * Then forwards of one row more than an inline call may have, whose residual less their rows' copies
 * is the hand-over of an off-thread call (63360ce). They stay off-thread whatever
 * HETMOE_GPU_INLINE_PREFILL says, and the cost model charges it to every call above the inline rows
 * in either mode: sigma-lite's 4096-token layers made inline still spent 0.47-0.83 ms from routing to
 * the call's end outside the native call (the CPU job's post comes first there), against 0.32-0.42
 * off-thread (H100 host, call 8). (Fitting the copies too on forwards of 257-4096
 * rows gave 11 GB/s on the H200 machine, where sigma-lite's 4096-token layers moved their 64 MiB in
 * 1.4 ms: the plan then left an expert on the CPU that made every layer 2x slower; 5c8ff4f.)
 * Re-placement is off: its checks (planning, on prefill-size forwards) are no GPU cost.
 */
function gpuForwardProbe(model: Model): GpuForwardProbe {
  const D = model.manifest.hiddenSize
  // The off-thread calls: one row more than an inline call may have (the same code path as a prefill
  // batch's, or a decode batch's beside CPU work).
  const inlineRows = envConfig().gpuInlineRows
  const offThreadRows = inlineRows + 1
  const T = Math.max(...FORWARD_TOKENS, offThreadRows)
  const opened = (async () => {
    const all = model.manifest.layers[0].experts.map((_, e) => e)
    // The 'hetmoe' strategy (and its re-placement tracking, which every forward feeds) wants a cost
    // model; these placeholder rates decide nothing here: every expert is resident, so no batch has
    // a cold expert to stream or to weigh against the CPU.
    const rt = await createRuntime({ model, gpu: 0, cpuThreads: 1, replace: false, _gpuInlinePrefill: false, plan: { layers: [{ layer: 0, gpuExperts: all }] }, _calibration: { format: 'hetmoe-calibration', version: 1, machine: calibrationMachine(), source: 'provisional (forward probe)', measuredAt: new Date().toISOString(), cpu: referenceH100().gpu!, ...referenceH100() } })
    return { rt, h: rt.arena.lease(T * D * 4), o: rt.arena.lease(T * D * 4) }
  })()
  let seed = 1
  return {
    async fit() {
      const { rt, h, o } = await opened
      const layer = () => rt.stats().layers[0]
      // One forward of n tokens: its time outside routing and the kernels, and the experts it ran.
      const forward = async (n: number): Promise<{ s: number; experts: number }> => {
        // Fresh routes each forward: 16 random rows (generating more in JavaScript costs ms), repeated.
        const hv = h.f32(n * D)
        const fresh = randomHidden(Math.min(n, 16), D, seed++)
        for (let r = 0; r < n; r += 16) hv.set(fresh.subarray(0, Math.min(16, n - r) * D), r * D)
        const before = layer()
        await rt.forward(0, h.f32(n * D), { out: o.f32(n * D) })
        const after = layer()
        const d = (k: 'total' | 'route' | 'gpuKernel') => after.ms[k] - before.ms[k]
        return { s: (d('total') - d('route') - d('gpuKernel')) / 1000, experts: after.gpuExperts - before.gpuExperts }
      }
      const decode: [number, number][] = []
      for (let i = 0; i < FORWARD_WARMUP + FORWARD_RUNS; i++) {
        const f = await forward(FORWARD_TOKENS[i % FORWARD_TOKENS.length])
        if (i >= FORWARD_WARMUP) decode.push([f.experts, f.s])
      }
      const { intercept: layerS, slope: expertS } = fitLine(decode)
      // Off-thread calls: what is left after the per-expert costs.
      const offThread: [number, number][] = []
      if (offThreadRows <= T && inlineRows > 0)
        for (let i = 0; i < OFF_THREAD_WARMUP + OFF_THREAD_RUNS; i++) {
          const f = await forward(offThreadRows)
          if (i >= OFF_THREAD_WARMUP) offThread.push([offThreadRows, f.s - expertS * f.experts])
        }
      return { layerS, expertS, offThread }
    },
    async close() {
      const { rt, h, o } = await opened
      h.release()
      o.release()
      await rt.close()
    },
  }
}

const mean = (xs: readonly number[]) => xs.reduce((s, x) => s + x, 0) / xs.length

/** Batch rows of the layer-call probe's forwards (with the inline rows and one more, where inside).
 *  From one row: below the first size the table is read from the fitted layer overhead, which on one
 *  host came out at 89 µs where sigma-lite's one-token layers took 66 in all (call 15: batch 1 ran 1.75x
 *  faster than predicted, 16 tokens 1.21x). */
const CALL_ROWS = [1, 16, 64, 256, 1024, 4096]
/** Untimed, then timed forwards a size: at least these many, and more where they are short (at least
 *  CALL_WARMUP_S and CALL_RUNS_S of forwards, at most CALL_MAX_WARMUP and CALL_MAX_RUNS). The warm-up
 *  is `hetmoe run`'s (stream-runner.ts: WARMUP), whose steady state the plan predicts: one-row forwards
 *  keep getting faster for about half a second. Nine one-row calls right after the probe's runtime
 *  opened averaged 0.15 ms on the GPU side (call 16); after 20 ms of warm-up 0.033 ms went to
 *  JavaScript around the native call where sigma-lite's spent 0.013 (call 18); after 100 ms (1000
 *  forwards at most) the probe's one-row point still came out at 51-64 µs beyond its experts' terms
 *  (calls 20-22) where sigma-lite's runtime spent about 40. Under `hetmoe run`'s loop, run first and
 *  again after 0.5-1.7 s of forwards, sigma-lite's one-row GPU side went from 0.081 ms to 0.071 and
 *  the probe model's from 0.090 to 0.059 (call 23, bench/app-loop-probe.ts). */
const CALL_WARMUP = 3
const CALL_RUNS = 9
const CALL_WARMUP_S = WARMUP.seconds
const CALL_RUNS_S = 0.03
const CALL_MAX_WARMUP = 20_000
/** Forwards the probe makes before it times any (all sizes together; the first, one row, makes them):
 *  forward() reaches its steady speed after some 5000 calls (stream-runner.ts: WARMUP). */
const CALL_JIT_FORWARDS = 8000
const CALL_MAX_RUNS = 200
/** Distinct hidden rows a probe batch repeats, scaled anew each forward: fresh values, the same routes
 *  (a positive scale leaves a linear gate's choice alone), so the probe routes once per size. */
const CALL_BASE_ROWS = 256
/** Their scales, one a forward in turn. */
const SCALES = [1, 1.125, 1.25, 1.375, 1.5, 1.625, 1.75]

/**
 * The GPU's layer calls measured whole (DeviceRates.layerCallS), and what a CPU job pays beside one at
 * prefill size (besideGpuS): a runtime over the dense probe model with the crew's threads, forwards of
 * CALL_ROWS rows that this thread has just written (as an app's residual add leaves them), first with
 * every expert resident (no CPU work: a call inline up to the inline rows, off-thread above), then at
 * the largest size with one expert on the CPU (the GPU waits asleep, the workers run the job alone,
 * as runtime.ts does at prefill sizes). Each is the mean of what the side's stage clock took, plus
 * what forward() spent outside the stage clocks, beyond the cost model's terms for its experts at this
 * batch's counts, given the rates fitted before. The
 * parts that probes of the backend alone and the activation copies charge left out a quarter of
 * sigma-lite's 4096-token GPU side and CPU side on the H100 machine (call 8: 3.17-3.36 ms against 2.62
 * predicted, and 3.45-3.78 against 2.6): copies of rows just written, the hand-overs, the choice of the
 * GPU's experts before the CPU job's post.
 */
function layerCallProbe(model: Model, threads: number, log: (line: string) => void): (rates: { cpu: DeviceRates; gpu: DeviceRates }) => Promise<LayerCallCosts> {
  return async ({ cpu, gpu }) => {
    const cost = new CostModel({ format: 'hetmoe-calibration', version: 1, machine: calibrationMachine(), source: 'provisional (layer call probe)', measuredAt: new Date().toISOString(), cpu, gpu, pcie: null })
    const m = model.manifest
    const D = m.hiddenSize
    const E = m.layers[0].experts.length
    const shape = expertShape(model.expert(0, 0))
    const inlineRows = gpu.inlineRows ?? 0
    const sizes = [...new Set([...CALL_ROWS, ...(inlineRows > 0 ? [inlineRows, inlineRows + 1] : [])])].filter((n) => n <= CALL_ROWS[CALL_ROWS.length - 1]).sort((a, b) => a - b)
    const maxT = sizes[sizes.length - 1]
    const base = randomHidden(CALL_BASE_ROWS, D, 17)
    let forwards = 0 // made by the probe so far (CALL_JIT_FORWARDS)
    const open = (gpuExperts: number[], budgetExperts: number) =>
      createRuntime({
        model, gpu: 0, cpuThreads: threads, replace: false, _gpuInlinePrefill: false,
        // Half an expert of room at most: nothing is streamed.
        gpuMemory: Math.floor(budgetExperts * shape.bytes), arenaBytes: arenaBytesFor(model, maxT) + 2 * maxT * D * 4,
        plan: { layers: [{ layer: 0, gpuExperts }] },
        _calibration: cost.calibration,
      })
    // Forwards of T rows: each side's stage seconds less the model's terms for its experts.
    const measure = async (rt: Runtime, T: number, onCpu: number | undefined): Promise<{ gpu: number[]; cpu: number[]; counts: Int32Array }> => {
      const h = rt.arena.lease(T * D * 4)
      const o = rt.arena.lease(T * D * 4)
      const hv = h.f32(T * D)
      const ov = o.f32(T * D)
      // As an app's residual add leaves them (stream-runner.ts: residualAdd): fresh values
      // (fillRepeating), then that very pass over them and the last output, adding it scaled to nothing
      // (the routes stay; the output starts zeroed, not as whatever the arena held). With the values
      // alone the device read 4096 rows in 1.7 ms on call 13's host, where sigma-lite's layers after a
      // residual add took 3.5-4.0 (and with TypedArray.set, this probe's first version, a 256-row call
      // cost 0.04 ms beyond its experts where sigma-lite's spent 0.5; call 10).
      ov.fill(0)
      // The scaled blocks made once: made per forward (Float32Array.map over 256 rows, 2 MiB), they
      // cost more than a one-row forward and left collections to land in the timed calls.
      const rows = Math.min(T, CALL_BASE_ROWS) * D
      const blocks = SCALES.map((k) => base.subarray(0, rows).map((v) => k * v))
      const write = (n: number) => {
        fillRepeating(hv, blocks[n % blocks.length])
        residualAdd(hv, ov, 1e-30)
      }
      try {
        write(0)
        const counts = routedCounts(rt, hv, T)
        const out = { gpu: [] as number[], cpu: [] as number[], counts }
        let gpuS = 0
        let maxN = 0
        for (let e = 0; e < E; e++) if (e !== onCpu) maxN = Math.max(maxN, counts[e])
        for (let e = 0; e < E; e++) if (e !== onCpu && counts[e] > 0) gpuS += cost.tGpu(shape, counts[e], cost.gpuLargeBatch(maxN))
        const cpuS = onCpu !== undefined ? cost.tCpu(shape, counts[onCpu]) + cost.cpuLayerS([shape], counts[onCpu]) : 0
        const parts: Record<'wall' | 'outside' | 'gpu' | 'gpuHost' | 'gpuStream' | 'gpuCopyIn' | 'gpuKernel' | 'cpu', number[]> = { wall: [], outside: [], gpu: [], gpuHost: [], gpuStream: [], gpuCopyIn: [], gpuKernel: [], cpu: [] }
        let warm = 0
        for (const t0 = performance.now(); warm < CALL_MAX_WARMUP && (warm < CALL_WARMUP || performance.now() - t0 < 1e3 * CALL_WARMUP_S || forwards < CALL_JIT_FORWARDS); warm++, forwards++) {
          write(warm)
          await rt.forward(0, hv, { out: ov })
        }
        let timedMs = 0
        for (let i = 0; i < CALL_MAX_RUNS && (i < CALL_RUNS || timedMs < 1e3 * CALL_RUNS_S); i++) {
          write(i)
          const before = { ...rt.stats().layers[0].ms }
          const t0 = performance.now()
          await rt.forward(0, hv, { out: ov })
          const wall = performance.now() - t0
          timedMs += wall
          forwards++
          const after = rt.stats().layers[0].ms
          const d = (k: keyof typeof before) => after[k] - before[k]
          // What forward() takes outside its route and compute clocks (the combine, the promise's
          // resolution, the end-of-forward work) belongs to whichever side the layer waits for:
          // sigma-lite's 4096-token forwards took 0.7 ms a batch of 4 layers more than their stage
          // clocks summed (call 11).
          const outside = wall - d('route') - d('compute')
          out.gpu.push((d('gpu') + outside) / 1000 - gpuS)
          if (onCpu !== undefined) out.cpu.push((d('cpu') + outside) / 1000 - cpuS)
          for (const [k, v] of [['wall', wall], ['outside', outside], ['gpu', d('gpu')], ['gpuHost', d('gpuHost')], ['gpuStream', d('gpuStream')], ['gpuCopyIn', d('gpuCopyIn')], ['gpuKernel', d('gpuKernel')], ['cpu', d('cpu')]] as const) parts[k].push(v)
        }
        const ms = (k: keyof typeof parts) => mean(parts[k]).toFixed(3)
        log(`calibration: layer call of ${T} rows${onCpu !== undefined ? ' with a CPU expert' : ''} (mean ms): wall ${ms('wall')}, outside the stages ${ms('outside')}, GPU side ${ms('gpu')} (native ${ms('gpuHost')}, device ${ms('gpuStream')}: copy in ${ms('gpuCopyIn')}, kernels ${ms('gpuKernel')}; model's expert terms ${(1e3 * gpuS).toFixed(3)})${onCpu !== undefined ? `, CPU side ${ms('cpu')} (model's ${(1e3 * cpuS).toFixed(3)})` : ''}`)
        return out
      } finally {
        h.release()
        o.release()
      }
    }
    // Means, not medians: a runtime's throughput pays for its slow calls too, and the per-layer
    // figures it reports are means. (Never below 0: a call cheaper than its terms costs nothing more.)
    const beyond = (xs: number[]) => Math.max(0, mean(xs))
    const costs: LayerCallCosts = { inline: [], offThread: [] }
    const all = await open(m.layers[0].experts.map((_, e) => e), E + 0.5)
    let counts: Int32Array = new Int32Array(E) // the largest batch's routes, measured last
    try {
      for (const T of sizes) {
        const r = await measure(all, T, undefined)
        ;(T <= inlineRows ? costs.inline : costs.offThread).push([4 * D * T, beyond(r.gpu)])
        counts = r.counts
      }
    } finally {
      await all.close()
    }
    // The CPU's expert: the one whose tokens come nearest an even share (a busy one, as a plan leaves there).
    let onCpu = 0
    for (let e = 1; e < E; e++) if (Math.abs(counts[e] - maxT / E) < Math.abs(counts[onCpu] - maxT / E)) onCpu = e
    const beside = await open(m.layers[0].experts.map((_, e) => e).filter((e) => e !== onCpu), E - 0.5)
    try {
      costs.besideGpuS = beyond((await measure(beside, maxT, onCpu)).cpu)
    } finally {
      await beside.close()
    }
    return costs
  }
}

/** Tokens per expert that a runtime's layer 0 routes `T` rows of `h` to (its own routing, as forward() does). */
function routedCounts(rt: Runtime, h: Float32Array, T: number): Int32Array {
  const leases: Lease[] = []
  try {
    return routeLayer(rt.model, 0, h, T, {}, (bytes) => {
      const l = rt.arena.lease(bytes)
      leases.push(l)
      return l
    }).counts.slice()
  } finally {
    for (const l of leases) l.release()
  }
}

/** Median seconds of a layer call whose arithmetic is negligible (one token through a 64 × 128 expert):
 *  the fixed cost of dispatching a layer to a backend and hearing back. */
function layerOverheadProbe(run: () => Promise<unknown>): () => Promise<number> {
  return async () => {
    const ts: number[] = []
    for (let i = 0; i < OVERHEAD_RUNS + 20; i++) {
      const t0 = performance.now()
      await run()
      if (i >= 20) ts.push((performance.now() - t0) / 1000)
    }
    return ts.sort((a, b) => a - b)[ts.length >> 1]
  }
}

// Copies of weights beside CPU layer jobs, as streaming makes them (PcieRates.besideCpu): the runtime
// starts a prefill layer's CPU job, not joined by the calling thread, while uploadAsync copies the
// streamed experts on a libuv thread, which stages them through pinned chunks with memcpy. Every
// worker of the crew is busy then, so the staging thread takes its CPU time from them. The copies run
// in rounds of BESIDE_COPY experts, again and again, while jobs of BESIDE_JOB_EXPERTS experts × 128
// tokens (a few ms each, like a hybrid prefill layer's cold experts) run back to back, until at least
// BESIDE_ROUNDS rounds and BESIDE_JOBS jobs have finished; the jobs' mean is set against the same
// jobs alone, the rounds' bytes against their time. Only rounds that ended while jobs still ran count.
const BESIDE_COPY = 3
const BESIDE_JOB_EXPERTS = 4
const BESIDE_JOB_TOKENS = 128
const BESIDE_JOBS = 6
const BESIDE_ROUNDS = 2
const BESIDE_MAX_S = 3

function uploadBesideCpuProbe(g: GpuExperts, cpu: CpuBackend, r: ProbeRig): NonNullable<CalibrationProbes['uploadBesideCpu']> {
  // The jobs read experts the copies do not (as a streamed expert leaves the CPU's share).
  const job = async () => {
    const t0 = performance.now()
    await cpu.run(r.work(BESIDE_JOB_EXPERTS, BESIDE_JOB_TOKENS, EXPERTS / 2), undefined, false)
    return (performance.now() - t0) / 1000
  }
  const copied = Array.from({ length: BESIDE_COPY }, (_, e) => e)
  const round = async () => {
    const t0 = performance.now()
    await Promise.all(copied.map((e) => g.uploadAsync(0, e)))
    const s = (performance.now() - t0) / 1000
    for (const e of copied) g.evict(0, e)
    return s
  }
  return async () => {
    await job()
    const alone: number[] = []
    for (let i = 0; i < BESIDE_JOBS; i++) alone.push(await job())
    const rounds: number[] = []
    let jobsRunning = true
    const copying = (async () => {
      while (jobsRunning) {
        const s = await round()
        if (jobsRunning) rounds.push(s)
      }
    })()
    const beside: number[] = []
    const t0 = performance.now()
    try {
      while ((beside.length < BESIDE_JOBS || rounds.length < BESIDE_ROUNDS) && performance.now() - t0 < 1000 * BESIDE_MAX_S) beside.push(await job())
    } finally {
      jobsRunning = false
      await copying
    }
    if (rounds.length === 0) throw new Error(`calibration: no copy of ${BESIDE_COPY} experts finished beside ${BESIDE_MAX_S} s of CPU layer jobs`)
    return { bytesPerS: (rounds.length * BESIDE_COPY * r.expertBytes) / rounds.reduce((a, b) => a + b, 0), cpuSlowdown: mean(beside) / mean(alone) }
  }
}

/** A CPU probe: k whole experts approximate the requested bytes (time scaled to them exactly); each
 *  call takes the next window of experts, so what it reads was not read just before. */
function cpuProbe(backend: ExpertBackend, r: ProbeRig): Probe {
  let cursor = 0
  let warmed = false
  return async ({ bytes, tokens, spread }) => {
    const k = spread ? Math.min(EXPERTS / 2, spread.length) : Math.min(EXPERTS / 2, Math.max(1, Math.round(bytes / r.expertBytes)))
    const n = Math.min(tokens, MAX_TOKENS)
    if (!warmed) {
      await backend.run(r.work(EXPERTS, 1)) // first touch of every page of the mapping, once
      warmed = true
    }
    const w = r.work(k, n, cursor)
    if (spread) {
      // n tokens an expert on average, in the spread's proportions (at most the rig's rows).
      const sum = spread.slice(0, k).reduce((x, y) => x + y, 0)
      w.experts.forEach((x, i) => (x.count = Math.max(1, Math.min(MAX_TOKENS, Math.round((n * k * spread[i]) / sum)))))
    }
    cursor = (cursor + k) % EXPERTS
    const t0 = performance.now()
    await backend.run(w)
    const s = (performance.now() - t0) / 1000
    return ((s * bytes) / (k * r.expertBytes)) * (tokens / n)
  }
}

/** Measures this machine through the runtime's backends (a few seconds to a minute). */
export async function measureCalibration(options: { gpu?: boolean; threads?: number; log?: (line: string) => void } = {}): Promise<Calibration> {
  const log = options.log ?? (() => {})
  const gpuOk = options.gpu !== false && GpuBackend.available().available
  const arena = new Arena({ bytes: 320 << 20 })
  const crew = new CpuCrew({ arena, threads: options.threads ?? envConfig().cpuThreads })
  const models: Model[] = []
  let gpu: GpuBackend | undefined
  let forwardProbe: GpuForwardProbe | undefined
  try {
    let denseBytes = 0 // one dense probe expert: the probe sizes are multiples of it
    const gpuProbes: Partial<Record<FormatKey, Probe>> = {}
    const cpuProbes: Partial<Record<FormatKey, Probe>> = {}
    let pcie: CalibrationProbes['pcie']
    let uploadBesideCpu: CalibrationProbes['uploadBesideCpu']
    if (gpuOk) gpu = GpuBackend.open({ arena, warn: log })
    // Tiny experts (arithmetic negligible): one per call gives the per-layer cost; TINY_K per call
    // the cost each further expert adds.
    const tinyDir = join(cacheDir(), 'calibration-models', 'overhead-v2')
    if (!existsSync(join(tinyDir, MANIFEST_FILE)))
      await synthModel({ preset: { name: 'calibration-overhead', layers: 1, hidden: 64, inner: 128, ffn: 'swiglu', routing: { kind: 'gate', experts: EXPERTS, topK: 1, normalize: false }, vocabSize: 1000 }, out: tinyDir, overwrite: true })
    const tiny = await loadModel(tinyDir)
    models.push(tiny)
    const tinyRig = rig(tiny, arena)
    const tinyCpu = new CpuBackend(crew, arena, tiny)
    const cpuOverhead = layerOverheadProbe(() => tinyCpu.run(tinyRig.work(1, 1)))
    const cpuManyOverhead = layerOverheadProbe(() => tinyCpu.run(tinyRig.work(TINY_K, 1)))
    const cpuExpertOverhead = async () => ((await cpuManyOverhead()) - (await cpuOverhead())) / (TINY_K - 1)
    // The GPU's fixed costs come from real-size calls through forward() (gpuForwardProbe, on the dense
    // probe model set below). Tiny experts showed 96 µs a call and 2.6 µs an expert, while sigma-lite's
    // calls spent ~0.3 ms a layer outside their kernels at 16 tokens.
    let denseModel: Model | undefined
    let gpuSerial: ((rates: DeviceRates) => Promise<number>) | undefined
    let forwardFit: ReturnType<GpuForwardProbe["fit"]> | undefined
    const forwardCosts = () => (forwardFit ??= (forwardProbe ??= gpuForwardProbe(denseModel!)).fit())
    const gpuOverhead = async () => (await forwardCosts()).layerS
    const gpuExpertOverhead = async () => (await forwardCosts()).expertS
    // The hand-over: an off-thread call's residual less its rows' copies (at the activation rate the
    // calibration charges) and the inline calls' per-layer cost. Inline calls are off
    // (HETMOE_GPU_INLINE_ROWS=0): 0.
    const gpuAsyncCall = async (rates: DeviceRates) => {
      const { layerS, offThread } = await forwardCosts()
      if (offThread.length === 0) return 0
      const rowS = rates.activationBytesPerS ? (8 * denseModel!.manifest.hiddenSize) / rates.activationBytesPerS : 0
      const left = offThread.map(([n, s]) => s - n * rowS).sort((a, b) => a - b)
      return left[left.length >> 1] - layerS
    }
    // Bytes a token's activations move (its hidden row in, its output row back) per second.
    const gpuActivation = () => activation!()
    for (const f of FORMATS) {
      log(`calibration: preparing the ${f} probe model`)
      const m = await probeModel(f)
      models.push(m)
      const key = `${f}/bf16` as FormatKey
      const r = rig(m, arena)
      if (f === 'dense') denseBytes = r.expertBytes
      const cpuBackend = new CpuBackend(crew, arena, m)
      cpuProbes[key] = cpuProbe(cpuBackend, r)
      if (gpu) {
        const g = new GpuExperts(gpu, m, arena)
        if (f === 'dense') (denseModel = m), (gpuSerial = serialProbe(g, m, arena))
        gpuProbes[key] = async ({ bytes, tokens }) => {
          // k timed experts, then at least 3 others (≥ 144 MB) run between the timed call and its
          // warm-up, so that none of the timed weights is still in the 50 MB L2 (a 48 MB expert fits
          // there: with one expert of warm-up between, the fitted read rate came out at 3.8 TB/s,
          // above the HBM's 3.35, where 64 MiB experts in the runtime's calls reached 2.9).
          const k = Math.min(EXPERTS / 2, Math.max(1, Math.round(bytes / r.expertBytes)))
          const w = Math.max(k, 3)
          const n = Math.min(tokens, MAX_TOKENS)
          for (let e = 0; e < k + w; e++) g.upload(0, e)
          try {
            const work = r.work(k + w, n)
            const timed = { ...work, experts: work.experts.slice(0, k) }
            const flush = { ...work, experts: work.experts.slice(k) }
            await g.run(timed)
            await g.run(flush)
            // The kernels alone, by the device's events: the call's fixed cost is the layer overhead
            // probe's, and its activation copies are the activation probe's (charged per row and per
            // batch by the cost model, not per FLOP).
            const s = (await g.run(timed)).kernelMs / 1000
            return ((s * bytes) / (k * r.expertBytes)) * (tokens / n)
          } finally {
            for (let e = 0; e < k + w; e++) g.evict(0, e)
          }
        }
        if (f === 'dense') pcie = (bytes) => {
          const k = Math.min(EXPERTS, Math.max(1, Math.round(bytes / r.expertBytes)))
          const t0 = performance.now()
          for (let e = 0; e < k; e++) g.upload(0, e)
          const s = (performance.now() - t0) / 1000
          for (let e = 0; e < k; e++) g.evict(0, e)
          return (s * bytes) / (k * r.expertBytes)
        }
        if (f === 'dense') uploadBesideCpu = uploadBesideCpuProbe(g, cpuBackend, r)
      }
    }
    let activation: (() => Promise<ActivationCosts>) | undefined
    if (gpu) {
      const m = await activationModel()
      models.push(m)
      activation = activationProbe(new GpuExperts(gpu, m, arena), m, arena)
    }
    // The CPU's streaming bandwidth with the crew's threads bounds its read rates (scheduler/calibrate.ts).
    const streams = Array.from(native().cpuReadBandwidth(512 << 20, crew.threads, 5)).sort((a, b) => a - b)
    const streamBytesPerS = streams[streams.length >> 1] * 1e9
    log(`calibration: CPU streaming read ${(streamBytesPerS / 1e9).toFixed(1)} GB/s on ${crew.threads} threads`)
    const probes: CalibrationProbes = {
      machine: calibrationMachine(),
      source: `runtime probes (CPU layer job on ${crew.threads} workers${gpu ? `, ${gpu.deviceName} kernels, uploads from mapped weights` : ''})`,
      cpu: { formats: cpuProbes, layerOverhead: cpuOverhead, expertOverhead: cpuExpertOverhead, readRateFrom: 'job', streamBytesPerS },
      ...(gpu ? { gpu: { formats: gpuProbes, layerOverhead: gpuOverhead, expertOverhead: gpuExpertOverhead, activation: gpuActivation, kernelTimed: true, asyncCall: gpuAsyncCall, serial: gpuSerial, inlineRows: envConfig().gpuInlineRows, largeBatchTokens: gpu.largeBatchMinTokens || undefined }, pcie, uploadBesideCpu } : {}),
      ...(gpu ? { layerCalls: layerCallProbe(denseModel!, crew.threads, log) } : {}),
      plan: { bytes: [denseBytes, 2 * denseBytes, 4 * denseBytes, 8 * denseBytes], tokens: [1, 16, 64, 256], repeats: 5 },
    }
    log(`calibration: measuring (${probes.source})`)
    return await loadCalibration(probes, { refresh: true })
  } finally {
    // A probe runtime that failed to open has nothing to close (its error is the one to report).
    await forwardProbe?.close().catch(() => {})
    gpu?.close()
    await crew.close()
    for (const m of models) m.close()
    arena.close()
  }
}

/** This machine as calibrations are keyed: CPU model and the first GPU's name. */
export function calibrationMachine(): { cpu: string; gpu: string | null } {
  return thisMachine(native().info().gpu.devices[0]?.name ?? null)
}

/**
 * The GPU's name as the NVIDIA driver lists it under /proc, which does not start CUDA (asking CUDA
 * for device 0 does, in every `hetmoe place`); only where every GPU listed has the same model and
 * CUDA_VISIBLE_DEVICES picks none out, so that it is CUDA's device 0 too. Otherwise undefined.
 */
export function driverGpuName(root = '/proc/driver/nvidia/gpus', env: NodeJS.ProcessEnv = process.env): string | undefined {
  if (env.CUDA_VISIBLE_DEVICES !== undefined) return undefined
  let names: string[]
  try {
    names = readdirSync(root).map((bus) => /^Model:\s*(.+?)\s*$/m.exec(readFileSync(join(root, bus, 'information'), 'utf8'))?.[1] ?? '')
  } catch {
    return undefined
  }
  return names.length > 0 && names[0] !== '' && names.every((n) => n === names[0]) ? names[0] : undefined
}

/** The cached runtime calibration of this machine, if one was measured. Looked up first under the
 *  driver's name for the GPU (no CUDA start-up), then under CUDA's (a calibration is saved under
 *  CUDA's name, which the driver's is expected to equal; a miss costs only the start-up). */
export function cachedCalibration(): Calibration | undefined {
  const runtime = (c: Calibration | undefined) => (c?.source.startsWith('runtime probes') ? c : undefined)
  const driverName = driverGpuName()
  const quick = driverName ? runtime(readCalibration(calibrationCachePath(thisMachine(driverName)))) : undefined
  return quick ?? runtime(readCalibration(calibrationCachePath(calibrationMachine())))
}
