// Fitting the cost model's rates from measurements, and caching them per machine.
//
// A probe runs one expert-like operation — read `bytes` of weights in a format and apply them to
// `tokens` tokens — and returns its seconds. The backends supply real probes (their own kernels);
// defaultProbes() below is a stand-in that measures this machine with typed-array loops in one JS
// thread, so it is a lower bound on what native SIMD workers reach.
//
// Every sample is the median of `repeats` runs (a minimum over two runs let one lucky cache hit set
// a rate: two calibrations of the same H100 machine disagreed 6× on the GPU's read rate).
// Fit, per device and format, against t(n) = fixed + max(bytes/readRate, n·flops/flopRate):
//   1. one token, several sizes: least squares t = fixed + bytes/readRate (fixed clamped ≥ 0). A
//      device's measured streaming bandwidth, where given, caps readRate (then fixed is refit as the
//      median of t − bytes/readRate): a fit over a few sizes can slope below what memory can do
//      (the CPU's came out at 1.8× its streaming bandwidth, its fixed cost inflated to match);
//   2. the largest size, several token counts: flopRate = max over samples of n·flops / (t − fixed).
//      While still bandwidth-bound that ratio is a lower bound on the true rate; once compute-bound
//      it equals it — so the max over samples is the best estimate either way.
import { createHash } from 'node:crypto'
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs'
import { cpus, homedir } from 'node:os'
import { dirname, join } from 'node:path'
import { envConfig } from '../runtime/config.js'
import type { Calibration, DeviceRates, FormatKey } from './cost-model.js'

export interface ProbeRequest {
  format: FormatKey
  bytes: number
  /** Dense-equivalent FLOPs per token of the probed weights. */
  flopsPerToken: number
  /** Tokens each expert (or each expert on average, with `spread`). */
  tokens: number
  /** A job of several experts: their tokens in these proportions, `tokens` on average (JOB_SPREAD). */
  spread?: readonly number[]
}

/**
 * The tokens of the CPU job that measures DeviceRates.jobFlopsPerS, in proportion: the 8 experts that
 * sigma-lite's 10% plan left on the CPU in layer 0 at 4096 tokens (call 14, 92-196 tokens each). Jobs
 * like it ran about as fast on the dense probe model (4.99 TFLOP/s) as on sigma-lite (4.71; call 15,
 * bench/cpu-expert-probe.ts), where the rate measured with an even job of 256 tokens an expert had
 * been 1.7x sigma-lite's jobs' (call 13).
 */
export const JOB_SPREAD: readonly number[] = [196, 188, 181, 175, 148, 147, 101, 92]

/** Seconds for one run of the operation described (the best of a few runs, ideally). */
export type Probe = (req: ProbeRequest) => number | Promise<number>

export interface DeviceProbes {
  /** One probe per format to calibrate; at least one. Formats left out borrow dense rates. */
  formats: Partial<Record<FormatKey, Probe>>
  /** Seconds of the fixed per-layer cost (dispatch + barrier, or launch + sync) with no work. */
  layerOverhead?: () => number | Promise<number>
  /** Seconds each further expert adds to a call when its arithmetic is negligible. Without it, the
   *  fitted intercept less the layer overhead stands in (which mixes in per-call costs). */
  expertOverhead?: () => number | Promise<number>
  /** 'job' (a device whose threads share each job, the CPU): the read rate is the slope over jobs of
   *  several experts, and what a job of one expert takes beyond that (and beyond the layer and expert
   *  overheads) is its tail (DeviceRates.jobTailReads); FLOP rates are what one expert reaches. 'fit'
   *  (default): the slope over all sizes, FLOPs at the largest (a GPU, whose launch covers every expert
   *  of a call). */
  readRateFrom?: 'fit' | 'job'
  /** Bytes per second the device streams from memory (a measured bound on every format's read rate). */
  streamBytesPerS?: number
  /** GPU: what a layer call's activation copies cost (DeviceRates.activationBytesPerS, freshRowsS). */
  activation?: () => ActivationCosts | Promise<ActivationCosts>
  /** GPU: seconds a layer call costs more on a libuv thread than inline (DeviceRates.asyncCallS), and
   *  the most rows an inline call had when it was measured. */
  asyncCall?: (rates: DeviceRates) => number | Promise<number>
  inlineRows?: number
  /** The format probes time the kernels alone (device events): their fitted fixed time is the
   *  kernels' own per-call cost, which adds to the layer overhead (measured outside the kernels). */
  kernelTimed?: boolean
  /** GPU: DeviceRates.serial given the rates fitted before it (an uneven call's kernels against their
   *  roofline), in [0, 1]. */
  serial?: (rates: DeviceRates) => number | Promise<number>
  /** GPU: the tokens per expert from which its layer calls run the large-batch kernel; each format is
   *  probed once more at that many tokens (the plan's largest bytes) for DeviceRates.largeBatch. */
  largeBatchTokens?: number
}

/** A GPU's activation copies: bytes per second of rows in and out, and what a call of `freshRows` rows
 *  pays more when the CPU has just written them (DeviceRates.freshRows). */
export interface ActivationCosts {
  bytesPerS: number
  freshS?: number
  freshRows?: number
}

/** What the layer-call probe measured: DeviceRates.layerCallS, and the CPU's besideGpuS where measured. */
export interface LayerCallCosts {
  inline: [number, number][]
  offThread: [number, number][]
  besideGpuS?: number
}

export interface CalibrationProbes {
  machine: { cpu: string; gpu: string | null }
  source: string
  cpu: DeviceProbes
  gpu?: DeviceProbes
  /** Seconds to copy `bytes` of weights to the GPU, the CPU idle. */
  pcie?: (bytes: number) => number | Promise<number>
  /** With pcie: one run of the same copies beside CPU layer jobs (PcieRates.besideCpu): the copies'
   *  rate then, and how much longer the jobs took than alone (median of `repeats` runs each). */
  uploadBesideCpu?: () => Promise<{ bytesPerS: number; cpuSlowdown: number }>
  /** With a GPU: layer calls measured whole through forward(), given both devices' fitted rates
   *  (DeviceRates.layerCallS for the GPU, besideGpuS for the CPU). */
  layerCalls?: (rates: { cpu: DeviceRates; gpu: DeviceRates }) => Promise<LayerCallCosts>
  /** Probe sizes; defaults suit native kernels (8–128 MiB, 1–512 tokens). */
  plan?: { bytes: number[]; tokens: number[]; repeats?: number }
}

const MiB = 2 ** 20
const DEFAULT_PLAN = { bytes: [8 * MiB, 32 * MiB, 128 * MiB], tokens: [1, 16, 64, 256, 512], repeats: 5 }

/** Fits a Calibration from the probes' timings. */
export async function calibrate(probes: CalibrationProbes): Promise<Calibration> {
  const plan = { ...DEFAULT_PLAN, ...probes.plan }
  const gpu = probes.gpu ? await fitDevice(probes.gpu, plan) : null
  let pcie: Calibration['pcie'] = null
  if (probes.pcie && gpu) {
    const samples: [number, number][] = []
    for (const b of plan.bytes) samples.push([b, await medianOf(plan.repeats ?? 5, () => probes.pcie!(b))])
    const { intercept, slope } = fitLine(samples)
    pcie = { latencyS: intercept, bytesPerS: 1 / slope }
    if (probes.uploadBesideCpu) {
      const runs: { bytesPerS: number; cpuSlowdown: number }[] = []
      for (let i = 0; i < (plan.repeats ?? 5); i++) runs.push(await probes.uploadBesideCpu())
      // A copy beside the CPU is never faster than alone, nor the job (noise either way is clamped).
      pcie.besideCpu = { bytesPerS: Math.min(pcie.bytesPerS, median(runs.map((r) => r.bytesPerS))), cpuSlowdown: Math.max(1, median(runs.map((r) => r.cpuSlowdown))) }
    }
  }
  const cpu = await fitDevice(probes.cpu, plan)
  if (probes.layerCalls && gpu) {
    const calls = await probes.layerCalls({ cpu, gpu })
    gpu.layerCallS = { inline: calls.inline, offThread: calls.offThread }
    if (calls.besideGpuS !== undefined) cpu.besideGpuS = calls.besideGpuS
  }
  return { format: 'hetmoe-calibration', version: 1, machine: probes.machine, source: probes.source, measuredAt: new Date().toISOString(), cpu, gpu, pcie }
}

async function fitDevice(dev: DeviceProbes, plan: Required<NonNullable<CalibrationProbes['plan']>> | typeof DEFAULT_PLAN): Promise<DeviceRates> {
  const rates: DeviceRates = { readBytesPerS: {}, flopsPerS: {}, expertOverheadS: 0, layerOverheadS: 0 }
  const keys = Object.keys(dev.formats) as FormatKey[]
  if (keys.length === 0) throw new RangeError('calibrate: a device needs at least one format probe')
  const fixed: number[] = []
  const tails: number[] = []
  const repeats = plan.repeats ?? 5
  rates.layerOverheadS = dev.layerOverhead ? await medianOf(repeats, dev.layerOverhead) : 0
  const perExpert = dev.expertOverhead ? Math.max(0, await medianOf(repeats, dev.expertOverhead)) : undefined
  for (const format of keys) {
    const probe = dev.formats[format]!
    // flopsPerToken of a square-ish dense matrix with these bytes; only the ratio matters to the fit.
    const flopsFor = (bytes: number) => 2 * (bytes / bytesPerParam(format))
    const oneToken: [number, number][] = []
    for (const bytes of plan.bytes) oneToken.push([bytes, await medianOf(repeats, () => probe({ format, bytes, flopsPerToken: flopsFor(bytes), tokens: 1 }))])
    // A job of k experts (the sizes are multiples of the first) pays k expert overheads: not bandwidth.
    const job = dev.readRateFrom === 'job' && perExpert !== undefined
    const perByteOverhead = job ? perExpert! / oneToken[0][0] : 0
    let { intercept, slope } = fitLine(oneToken.map(([b, t]) => [b, t - b * perByteOverhead]))
    // Sparse formats read fewer bytes per dense-equivalent byte, but never faster than memory streams.
    if (dev.streamBytesPerS && 1 / slope > dev.streamBytesPerS) {
      slope = 1 / dev.streamBytesPerS
      intercept = Math.max(0, median(oneToken.map(([b, t]) => t - b * slope)))
    }
    if (job) {
      // A CPU job of one expert streams at ~60% of the rate of several (its threads wait for each other
      // between the expert's two phases: 64 MiB took 0.95 ms on the Xeon where the slope over 1-8 experts
      // gave 0.68), and a job of several pays that wait once, for its last expert. Charging it per
      // expert instead (the one-expert rate) predicted sigma-lite's CPU side at 10% GPU budget 1.3x slow.
      const [b0, t0] = oneToken[0]
      tails.push(Math.max(0, t0 - rates.layerOverheadS - perExpert! - b0 * slope) / (b0 * slope))
    }
    rates.readBytesPerS[format] = 1 / slope
    fixed.push(intercept)
    // FLOP rates too come from one expert where the device's threads share it: 8 experts of 256
    // tokens kept the Xeon's 16 cores at 4.8 TFLOP/s, one expert of 135 tokens ran at a third of that,
    // and a planner trusting the former left prefill experts on the CPU that made the layer 2x slower.
    const bytes = dev.readRateFrom === 'job' ? plan.bytes[0] : plan.bytes[plan.bytes.length - 1]
    let flopRate = 0
    for (const tokens of plan.tokens) {
      const t = await medianOf(repeats, () => probe({ format, bytes, flopsPerToken: flopsFor(bytes), tokens }))
      // The fixed cost stays in: subtracting a fitted intercept from a time close to it divides by
      // noise (rates of 10^20 were seen), and a rate that is a lower bound only makes plans cautious.
      flopRate = Math.max(flopRate, (tokens * flopsFor(bytes)) / t)
    }
    rates.flopsPerS[format] = flopRate
    if (dev.readRateFrom === 'job') {
      // The job rate (DeviceRates.jobFlopsPerS): a job of JOB_SPREAD's experts, its busiest at the plan's
      // most tokens, less one expert's job at their mean, is the arithmetic of all but the last expert
      // (whose share is one expert's alone).
      const k = JOB_SPREAD.length
      const tokens = Math.round((plan.tokens[plan.tokens.length - 1] * JOB_SPREAD.reduce((x, y) => x + y, 0)) / k / Math.max(...JOB_SPREAD))
      const oneS = await medianOf(repeats, () => probe({ format, bytes, flopsPerToken: flopsFor(bytes), tokens }))
      const t = await medianOf(repeats, () => probe({ format, bytes: k * bytes, flopsPerToken: flopsFor(k * bytes), tokens, spread: JOB_SPREAD }))
      const rate = t > oneS ? (tokens * (flopsFor(k * bytes) - flopsFor(bytes))) / (t - oneS) : 0
      rates.jobFlopsPerS ??= {}
      rates.jobFlopsPerS[format] = Math.max(flopRate, rate)
    }
    if (dev.largeBatchTokens !== undefined) {
      // Weights streamed by the large-batch kernel at its fewest tokens, where the arithmetic is small
      // next to the reads: the plan's largest probe, less the fixed time the read fit found (charged
      // apart), at most half of it (a fixed time near the probe's is noise).
      const lbBytes = plan.bytes[plan.bytes.length - 1]
      const t = await medianOf(repeats, () => probe({ format, bytes: lbBytes, flopsPerToken: flopsFor(lbBytes), tokens: dev.largeBatchTokens! }))
      rates.largeBatch ??= { minTokens: dev.largeBatchTokens, readBytesPerS: {} }
      rates.largeBatch.readBytesPerS[format] = lbBytes / Math.max(t - intercept, t / 2)
    }
  }
  // A probe's fixed time includes dispatching its layer, which the cost model charges once per layer.
  rates.expertOverheadS = perExpert ?? Math.max(0, median(fixed) - rates.layerOverheadS)
  if (tails.length) rates.jobTailReads = median(tails)
  if (dev.kernelTimed) rates.layerOverheadS += median(fixed)
  if (dev.activation) {
    const runs: ActivationCosts[] = []
    for (let i = 0; i < repeats; i++) runs.push(await dev.activation())
    rates.activationBytesPerS = median(runs.map((r) => r.bytesPerS))
    const fresh = runs.filter((r) => r.freshS !== undefined && r.freshRows)
    if (fresh.length) rates.freshRows = { rows: fresh[0].freshRows!, seconds: median(fresh.map((r) => r.freshS!)) }
  }
  // Given the rates fitted so far: an off-thread call's time less what they already charge for it.
  if (dev.asyncCall) rates.asyncCallS = Math.max(0, await dev.asyncCall(rates))
  if (dev.serial) rates.serial = Math.min(1, Math.max(0, await medianOf(repeats, () => dev.serial!(rates))))
  if (dev.inlineRows !== undefined) rates.inlineRows = dev.inlineRows
  return rates
}

/** Least squares t = intercept + slope·x, intercept clamped at 0 (then refit through the origin). */
export function fitLine(samples: [number, number][]): { intercept: number; slope: number } {
  const n = samples.length
  const mx = samples.reduce((s, [x]) => s + x, 0) / n
  const my = samples.reduce((s, [, y]) => s + y, 0) / n
  let sxy = 0
  let sxx = 0
  for (const [x, y] of samples) {
    sxy += (x - mx) * (y - my)
    sxx += (x - mx) ** 2
  }
  let slope = sxx > 0 ? sxy / sxx : my / mx
  let intercept = my - slope * mx
  if (intercept < 0 || !(slope > 0)) {
    intercept = 0
    slope = samples.reduce((s, [x, y]) => s + x * y, 0) / samples.reduce((s, [x]) => s + x * x, 0)
  }
  return { intercept, slope }
}

function bytesPerParam(format: FormatKey): number {
  const dtypeBytes = format.endsWith('fp32') ? 4 : 2
  if (format.startsWith('2:4')) return (dtypeBytes * 10) / 16
  if (format.startsWith('75%')) return (dtypeBytes * 5) / 16
  return dtypeBytes
}

async function medianOf(repeats: number, f: () => number | Promise<number>): Promise<number> {
  const xs: number[] = []
  for (let i = 0; i < repeats; i++) xs.push(await f())
  return median(xs)
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  return s.length ? s[Math.floor(s.length / 2)] : 0
}

// ── default probes ────────────────────────────────────────────────────────────────────────────

/**
 * This machine measured from JavaScript: fp32 weights streamed through a 4-accumulator dot-product
 * loop, one thread; no GPU and no PCIe. Small sizes keep it under half a second. The runtime replaces
 * these with its native backends' probes.
 */
export function defaultProbes(machine: { cpu: string; gpu: string | null } = thisMachine()): CalibrationProbes {
  const cols = 1024
  const plan = { bytes: [1 * MiB, 2 * MiB, 8 * MiB], tokens: [1, 4], repeats: 3 }
  let weights: Float32Array | undefined
  let x: Float32Array | undefined
  let sink = 0
  const run = (rows: number, tokens: number, w: Float32Array, xs: Float32Array): void => {
    for (let r = 0; r < rows; r++) {
      const wr = r * cols
      for (let t = 0; t < tokens; t++) {
        const xv = t * cols
        let a0 = 0, a1 = 0, a2 = 0, a3 = 0
        for (let c = 0; c < cols; c += 4) {
          a0 += w[wr + c] * xs[xv + c]
          a1 += w[wr + c + 1] * xs[xv + c + 1]
          a2 += w[wr + c + 2] * xs[xv + c + 2]
          a3 += w[wr + c + 3] * xs[xv + c + 3]
        }
        sink += a0 + a1 + a2 + a3
      }
    }
  }
  const probe: Probe = ({ bytes, tokens }) => {
    if (!weights || !x) {
      // Allocate the largest sizes once and let the JIT optimise the loop before anything is timed:
      // an unoptimised first run would read as a large fixed cost.
      weights = new Float32Array(Math.max(...plan.bytes) / 4)
      for (let i = 0; i < weights.length; i++) weights[i] = (i % 1000) / 1000
      x = new Float32Array(Math.max(...plan.tokens) * cols)
      for (let i = 0; i < x.length; i++) x[i] = (i % 7) / 7
      for (let i = 0; i < 30; i++) run(64, 2, weights, x)
    }
    const rows = Math.max(1, Math.min(Math.floor(bytes / 4 / cols), weights.length / cols))
    const start = performance.now()
    run(rows, Math.min(tokens, x.length / cols), weights, x)
    const s = (performance.now() - start) / 1000
    if (sink === 42.4242) console.log('') // keeps the loop's result observable to the optimiser
    return s
  }
  return {
    machine,
    source: 'js default probes (one JavaScript thread; a lower bound until native probes exist)',
    cpu: { formats: { 'dense/fp32': probe } },
    plan,
  }
}

export function thisMachine(gpu: string | null = null): { cpu: string; gpu: string | null } {
  return { cpu: cpus()[0]?.model?.trim() || 'unknown cpu', gpu }
}

/**
 * Reference GPU rates, from the H100 measurements recorded in DESIGN.md (cuBLAS dense weights at
 * ~1.8 TB/s; ~690 TFLOP/s dense, ~950 dense-equivalent for mma.sp), PCIe Gen5 x16 ~50 GB/s. For
 * planning on a machine without the GPU; reports say so whenever these are used.
 */
export function referenceH100(): Pick<Calibration, 'gpu' | 'pcie'> {
  return {
    gpu: {
      readBytesPerS: { 'dense/bf16': 1.8e12, '2:4/bf16': 1.8e12, '75%/bf16': 1.8e12, 'dense/fp32': 1.8e12 },
      flopsPerS: { 'dense/bf16': 690e12, '2:4/bf16': 950e12, '75%/bf16': 1400e12, 'dense/fp32': 50e12 },
      expertOverheadS: 2e-6,
      layerOverheadS: 8e-6,
    },
    pcie: { bytesPerS: 50e9, latencyS: 10e-6 },
  }
}

// ── cache ─────────────────────────────────────────────────────────────────────────────────────

/** `$HETMOE_CACHE_DIR/calibration-<hash>.json` (default ~/.cache/hetmoe), one file per cpu+gpu. */
export function calibrationCachePath(machine: { cpu: string; gpu: string | null }, env: NodeJS.ProcessEnv = process.env): string {
  const dir = envConfig(env).cacheDir ?? join(homedir(), '.cache', 'hetmoe')
  const hash = createHash('sha256').update(`${machine.cpu}\n${machine.gpu ?? 'no gpu'}`).digest('hex').slice(0, 16)
  return join(dir, `calibration-${hash}.json`)
}

export function readCalibration(path: string): Calibration | undefined {
  try {
    const c = JSON.parse(readFileSync(path, 'utf8')) as Calibration
    // Runtime-probe calibrations from before the GPU's layer calls were measured whole, or the CPU's job
    // FLOP rate, mislead the planner at large batches: measure again.
    const stale = c.source.startsWith('runtime probes') && ((c.gpu && c.gpu.layerCallS === undefined) || c.cpu?.jobFlopsPerS === undefined)
    return c.format === 'hetmoe-calibration' && c.version === 1 && c.cpu && !stale ? c : undefined
  } catch {
    return undefined
  }
}

export function writeCalibration(path: string, c: Calibration): void {
  mkdirSync(dirname(path), { recursive: true })
  const tmp = `${path}.${process.pid}.tmp`
  writeFileSync(tmp, JSON.stringify(c, null, 2) + '\n')
  renameSync(tmp, path) // atomic: a concurrent reader never sees half a file
}

/** The cached calibration for these probes' machine, measuring (and caching) it when absent or `refresh`. */
export async function loadCalibration(probes: CalibrationProbes = defaultProbes(), options: { refresh?: boolean; env?: NodeJS.ProcessEnv } = {}): Promise<Calibration> {
  const path = calibrationCachePath(probes.machine, options.env)
  const cached = options.refresh ? undefined : readCalibration(path)
  if (cached) return cached
  const c = await calibrate(probes)
  writeCalibration(path, c)
  return c
}

// ── report ────────────────────────────────────────────────────────────────────────────────────

const gbps = (b: number) => `${(b / 1e9).toFixed(1)} GB/s`
const tflops = (f: number) => (f >= 1e12 ? `${(f / 1e12).toFixed(1)} TFLOP/s` : `${(f / 1e9).toFixed(1)} GFLOP/s`)
const us = (s: number) => `${(s * 1e6).toFixed(1)} µs`

const callTable = (points: [number, number][]) => (points.length ? points.map(([b, t]) => `${(b / MiB).toFixed(b < MiB ? 2 : 0)} MiB ${us(t)}`).join(', ') : 'none')

/** Lines for `hetmoe info` and the place report. */
export function describeCalibration(c: Calibration): string {
  const dev = (name: string, d: DeviceRates | null): string[] => {
    if (!d) return [`${name.padEnd(5)} none`]
    const keys = Object.keys(d.readBytesPerS) as FormatKey[]
    return [
      `${name.padEnd(5)} per-expert overhead ${us(d.expertOverheadS)}, per-layer ${us(d.layerOverheadS)}${d.jobTailReads !== undefined ? ` + ${d.jobTailReads.toFixed(2)} expert reads` : ''}${d.activationBytesPerS ? `, activations ${gbps(d.activationBytesPerS)}` : ''}${d.freshRows ? ` (+${us(d.freshRows.seconds)} a call of ${d.freshRows.rows} rows just written)` : ''}${d.asyncCallS !== undefined ? `, off-thread call +${us(d.asyncCallS)} (inline up to ${d.inlineRows} rows)` : ''}`,
      ...keys.map((k) => `      ${k.padEnd(10)} weights ${gbps(d.readBytesPerS[k]!)}${d.largeBatch?.readBytesPerS[k] ? ` (${gbps(d.largeBatch.readBytesPerS[k]!)} from ${d.largeBatch.minTokens} tokens an expert)` : ''}, compute ${tflops(d.flopsPerS[k] ?? 0)}${d.jobFlopsPerS?.[k] ? ` (${tflops(d.jobFlopsPerS[k]!)} in a job of several experts)` : ''}`),
      ...(d.serial !== undefined ? [`      reads and arithmetic: ${(100 * d.serial).toFixed(0)}% of the shorter adds to the longer (0%: the plain roofline)`] : []),
      ...(d.layerCallS ? [`      layer calls measured whole, by the batch's hidden bytes: ${callTable(d.layerCallS.inline)} inline; ${callTable(d.layerCallS.offThread)} off-thread`] : []),
      ...(d.besideGpuS !== undefined ? [`      a layer job beside a prefill-size GPU call: +${us(d.besideGpuS)}`] : []),
    ]
  }
  return [
    `calibration: ${c.source}; measured ${c.measuredAt} on ${c.machine.cpu}${c.machine.gpu ? ` + ${c.machine.gpu}` : ''}`,
    ...dev('CPU', c.cpu),
    ...dev('GPU', c.gpu),
    `PCIe  ${c.pcie ? `${gbps(c.pcie.bytesPerS)}, latency ${us(c.pcie.latencyS)}${c.pcie.besideCpu ? `; beside a CPU layer job ${gbps(c.pcie.besideCpu.bytesPerS)}, the job ${c.pcie.besideCpu.cpuSlowdown.toFixed(2)}x as long` : ''}` : 'none'}`,
  ].join('\n')
}
