// Predicted time of one expert on one device: a roofline per weight format.
//
//   t(n) = 0                                              n = 0
//   t(n) = expertOverhead + max(r, c) + serial · min(r, c) + n · rowS              n ≥ 1
//          with r = bytes / readRate, c = n · flopsPerToken / flopRate
//
// `serial` is the share of the smaller of the two that does not hide under the larger: 0 is the ideal
// roofline (max), 1 is reads and arithmetic one after the other (sum). The CPU's is 0 (not measured);
// the GPU's is measured on an uneven prefill-like call (runtime/calibration.ts), because its grouped
// kernel came out near 1 there: sigma-lite's 4096-token layers ran their kernels in 1.0-1.1 ms where
// the max predicted 0.65 and the sum 1.0 (call 5, 6f6852d).
//
// rowS is the GPU's copy of one output row back to host memory (4·D bytes at its measured activation
// rate; 0 on the CPU, which writes rows in place); the GPU's per-layer cost adds the copy of the
// batch's hidden rows in (CostModel.gpuLayerS). At 4096 tokens × D=2048 those copies move 64 MiB a
// layer and outweigh the kernels several times over, so a model without them overrates the GPU at
// prefill.
//
// Below a few tokens the weights' bytes dominate (decode is bandwidth-bound); above, the FLOPs do.
// The crossover (≈ readRate·flopsPerToken / (flopRate·bytes) tokens) comes out of the calibration,
// it is not a constant. A streamed expert costs tPcie(bytes) + tGpu(n). Rates are *measured*
// (calibrate.ts); `flopRate` counts dense-equivalent FLOPs (2·rows·cols per token per matrix), so a
// sparse kernel that skips zeros simply shows a higher rate for its format.
import type { ExpertRef, MatrixRef, WeightDtype, WeightFormat } from '../experts/manifest.js'

export type FormatKey = `${WeightFormat}/${WeightDtype}`

export interface DeviceRates {
  /** Weight bytes read per second when bandwidth-bound, by format ('dense/bf16', '2:4/bf16', …). */
  readBytesPerS: Partial<Record<FormatKey, number>>
  /** Dense-equivalent FLOP/s when compute-bound, by format. */
  flopsPerS: Partial<Record<FormatKey, number>>
  /** Fixed seconds per expert run (task setup, per-expert kernel prologue). */
  expertOverheadS: number
  /** Fixed seconds per layer when this device has any work (pool dispatch + barrier, or a launch + sync). */
  layerOverheadS: number
  /** CPU only: what a layer job costs once beyond its experts, in read times of one of its experts: the
   *  crew's threads wait for each other between the last expert's two phases, so one expert alone
   *  streams at ~60% of the rate that several reach (CostModel.cpuLayerS). Absent: 0 (older calibrations). */
  jobTailReads?: number
  /** GPU only: bytes per second its layer calls move activations at (hidden rows in, output rows out,
   *  through the registered arena, fp32 conversions included). Absent: not charged (older calibrations). */
  activationBytesPerS?: number
  /** GPU only: what a layer call of `rows` hidden rows the CPU has just written pays beyond their bytes
   *  at activationBytesPerS (the device reads rows still in the writing core's cache slowly); charged
   *  in proportion up to that many rows, in full from there (the cache holds no more). Absent: 0. */
  freshRows?: { rows: number; seconds: number }
  /** GPU only: what a layer call costs beyond that when it goes to a libuv thread instead of running on
   *  the caller's (a call beside CPU work, or of more than `inlineRows` rows): the hand-over and the
   *  event loop's wake-up. Absent: not charged (older calibrations). */
  asyncCallS?: number
  /** GPU only: the most rows a call with no CPU work beside it ran inline with when measured. */
  inlineRows?: number
  /** Share (0-1) of the smaller of an expert's read time and arithmetic time that adds to the larger
   *  (the roofline's `serial`, above). Absent: 0, the plain roofline (older calibrations, the CPU). */
  serial?: number
  /** GPU only: the weight-read rate of calls whose busiest expert has at least `minTokens` tokens, which
   *  run another kernel (native/cuda/moe_launch.cuh: the sm_90a large-batch kernel from
   *  HETMOE_WGMMA_MIN tokens): it streamed sigma-lite's experts at ~3.3 TB/s at 256-token batches on
   *  the H200, where the decode kernel's fitted rate was 4.47. Absent: readBytesPerS throughout. */
  largeBatch?: { minTokens: number; readBytesPerS: Partial<Record<FormatKey, number>> }
  /** GPU only: what a layer call cost through forward() beyond its experts' own terms (their roofline,
   *  fixed cost and output rows), measured on rows just written with no CPU work beside
   *  (runtime/calibration.ts: layerCallProbe): [bytes of the batch's hidden rows (4·D·rows), seconds],
   *  ascending, for calls made on the calling thread (at most inlineRows rows) and for calls handed to
   *  a libuv thread. It stands in for the sum of the parts above (layer overhead, activation copies in,
   *  fresh rows, hand-over), read between its points and from (0, layerOverheadS) (gpuLayerS): that sum
   *  predicted sigma-lite's 4096-token GPU side at 2.62 ms where it took 3.17-3.36 (call 8). Absent: the
   *  sum (older calibrations). */
  layerCallS?: { inline: [number, number][]; offThread: [number, number][] }
  /** CPU only: what a layer job costs more beside a GPU call of more than the inline rows (prefill) than
   *  its experts' terms and cpuLayerS say (measured the same way: the GPU's choice before the post, the
   *  completion's hop, the call's copies through the same memory). Absent: 0. */
  besideGpuS?: number
  /** CPU only: the FLOP rate of a layer job of several experts, by format, where flopsPerS is one
   *  expert's alone: the crew's threads overlap one expert's phases with another's, and only the job's
   *  last expert runs as if alone (CostModel.cpuJobTailS). Sigma-lite's hybrid prefill layers (8-9 CPU
   *  experts of 90-215 tokens) took 0.65 of what one expert's rate predicted (H100 machine, call 12).
   *  Absent: flopsPerS throughout (older calibrations). */
  jobFlopsPerS?: Partial<Record<FormatKey, number>>
}

export interface Calibration {
  format: 'hetmoe-calibration'
  version: 1
  /** The machine the numbers were measured on. */
  machine: { cpu: string; gpu: string | null }
  /** Where the numbers come from: e.g. 'native probes', 'js default probes', 'reference h100 (DESIGN.md)'. */
  source: string
  measuredAt: string
  cpu: DeviceRates
  /** null: no GPU (everything runs on the CPU). */
  gpu: DeviceRates | null
  /** Host → GPU copies of weights (through pinned staging); null without a GPU. */
  pcie: PcieRates | null
}

export interface PcieRates {
  /** Measured with the CPU idle. */
  bytesPerS: number
  latencyS: number
  /** The same copies while a CPU layer job runs on every worker (runtime/calibration.ts:
   *  uploadBesideCpuProbe), which is when streaming happens: the copy's staging thread competes with
   *  the crew's, and both slow down. `bytesPerS`: the copy's rate then; `cpuSlowdown` (≥ 1): how much
   *  longer the job's work takes while a copy runs. Without them the cost model predicted a hybrid
   *  4096-token sigma-lite batch 20-25% too fast on two H100 hosts (calls 18-19); measured, the copies
   *  ran at 0.6-0.7 of their idle rate and the jobs 1.09-1.24x as long (calls 20-22). Absent: the idle
   *  rate, no slowdown (older calibrations). */
  besideCpu?: { bytesPerS: number; cpuSlowdown: number }
}

/** What the cost model needs to know about one expert. */
export interface ExpertShape {
  /** Bytes of all its matrices as stored (values + metadata). */
  bytes: number
  /** Dense-equivalent FLOPs per token: 2·rows·cols summed over its matrices. */
  flopsPerToken: number
  format: FormatKey
  /** The model width D (each routed row is 4·D bytes of fp32 activations); absent: not charged. */
  hiddenSize?: number
}

const DTYPE_BYTES: Record<WeightDtype, number> = { bf16: 2, fp32: 4 }

/** Stored bytes of a rows × cols matrix in a format, as native/formats/layout.h lays it out. */
export function matrixBytes(rows: number, cols: number, format: WeightFormat, dtype: WeightDtype): number {
  const v = DTYPE_BYTES[dtype]
  if (format === 'dense') return rows * cols * v
  const keptRows = format === '75%' ? rows / 2 : rows
  const values = keptRows * (cols / 2) * v
  const meta = keptRows * (cols / 16) * 4
  const select = format === '75%' ? (rows / 2) * Math.ceil(cols / 128) : 0
  return values + meta + select
}

const refBytes = (m: MatrixRef): number => m.values.bytes + (m.meta?.bytes ?? 0) + (m.select?.bytes ?? 0)

/** An expert's shape from its manifest entry (bytes as stored; the format of its up matrix). */
export function expertShape(e: ExpertRef): ExpertShape {
  const ms = [e.gate, e.up, e.down].filter((m): m is MatrixRef => m !== undefined)
  return {
    bytes: ms.reduce((s, m) => s + refBytes(m), 0),
    flopsPerToken: ms.reduce((s, m) => s + 2 * m.rows * m.cols, 0),
    format: `${e.up.format}/${e.up.dtype}`,
    hiddenSize: e.up.cols,
  }
}

/** Roofline parameters of one expert on one device:
 *  t(n≥1) = fixed + max(readS, n·perTokenS) + serial·min(readS, n·perTokenS) + n·rowS. */
export interface Roofline {
  fixedS: number
  readS: number
  perTokenS: number
  /** Per routed row, outside the roofline's max (the GPU's copy of the row back; 0 on the CPU). */
  rowS: number
  /** DeviceRates.serial (0 when absent). */
  serial: number
}

export class CostModel {
  readonly calibration: Calibration
  /** The CPU's rates for an expert in a layer job: its arithmetic at the job's FLOP rate where
   *  calibrated. Built once: planStreaming asks for every cold expert of every batch. */
  readonly #cpuJobRates: DeviceRates

  constructor(calibration: Calibration) {
    this.calibration = calibration
    const c = calibration.cpu
    this.#cpuJobRates = c.jobFlopsPerS ? { ...c, flopsPerS: c.jobFlopsPerS } : c
  }

  get hasGpu(): boolean {
    return this.calibration.gpu !== null
  }

  /** An expert in a CPU layer job: its arithmetic at the job's FLOP rate where calibrated (the job's
   *  last expert pays the difference to one expert's rate once: cpuLayerS). */
  cpuRoofline(e: ExpertShape): Roofline {
    return roofline(this.#cpuJobRates, e)
  }

  /** Infinity-free: without a GPU every term is Infinity so nothing is ever placed there. `largeBatch`:
   *  the expert runs in a call whose busiest expert has the large-batch kernel's tokens (gpuLargeBatch). */
  gpuRoofline(e: ExpertShape, largeBatch = false): Roofline {
    const g = this.calibration.gpu
    if (!g) return { fixedS: Infinity, readS: Infinity, perTokenS: Infinity, rowS: Infinity, serial: 0 }
    const r = roofline(g, e)
    const rate = largeBatch ? g.largeBatch?.readBytesPerS[e.format] : undefined
    return rate ? { ...r, readS: e.bytes / rate } : r
  }

  /** Whether a GPU call whose busiest expert gets `maxTokens` tokens runs the large-batch kernel. */
  gpuLargeBatch(maxTokens: number): boolean {
    const lb = this.calibration.gpu?.largeBatch
    return lb !== undefined && maxTokens >= lb.minTokens
  }

  tCpu(e: ExpertShape, n: number): number {
    return evalRoofline(this.cpuRoofline(e), n)
  }

  /** Time on the GPU when the expert is resident there (`largeBatch`: see gpuRoofline). */
  tGpu(e: ExpertShape, n: number, largeBatch = false): number {
    return evalRoofline(this.gpuRoofline(e, largeBatch), n)
  }

  /** Time to copy `bytes` of weights to the GPU (Infinity without one); `besideCpu`: while a CPU layer
   *  job runs (PcieRates.besideCpu). */
  tPcie(bytes: number, besideCpu = false): number {
    const p = this.calibration.pcie
    if (!p) return Infinity
    return p.latencyS + bytes / ((besideCpu ? p.besideCpu?.bytesPerS : undefined) ?? p.bytesPerS)
  }

  /** What a CPU layer side of `cpuS` seconds takes longer while copies of `uploadS` seconds run beside
   *  it: at PcieRates.besideCpu's slowdown f, the job does 1/f of its work a second during the copies,
   *  so it ends min(uploadS, f·cpuS)·(1 − 1/f) later. 0 where not measured. */
  cpuBesideUploadS(cpuS: number, uploadS: number): number {
    const f = this.calibration.pcie?.besideCpu?.cpuSlowdown ?? 1
    if (!(f > 1) || !(cpuS > 0) || !(uploadS > 0)) return 0
    return Math.min(uploadS, f * cpuS) * (1 - 1 / f)
  }

  /** The CPU's fixed cost of a layer job that runs some of `experts` (a layer's, which share a shape in
   *  practice), `tokensPerExpert` each on average: its dispatch, its tail (DeviceRates.jobTailReads) of
   *  their mean read time, and its last expert's arithmetic at one expert's rate (cpuJobTailS). */
  cpuLayerS(experts: readonly ExpertShape[], tokensPerExpert = 0): number {
    const c = this.calibration.cpu
    if (experts.length === 0) return c.layerOverheadS
    const tail = c.jobTailReads ?? 0
    let extraS = 0
    for (const e of experts) extraS += tail * this.cpuRoofline(e).readS + this.cpuJobTailS(e, tokensPerExpert)
    return c.layerOverheadS + extraS / experts.length
  }

  /** What an expert's `n` tokens cost more at one expert's FLOP rate than at a job's (DeviceRates.
   *  jobFlopsPerS), which tCpu charges: the job's last expert pays it. 0 without a job rate. */
  cpuJobTailS(e: ExpertShape, n: number): number {
    const c = this.calibration.cpu
    if (!c.jobFlopsPerS || !(n > 0)) return 0
    return Math.max(0, n * e.flopsPerToken * (1 / rateFor(c.flopsPerS, e.format) - 1 / rateFor(c.jobFlopsPerS, e.format)))
  }

  /** The GPU's fixed cost of a layer call that has work: launch + sync, and copying the batch's
   *  `batchTokens` hidden rows of width `hiddenSize` in (every row goes: the kernels gather on load).
   *  A call of more than the inline rows also pays the hand-over to a libuv thread (gpuAsyncS). Where
   *  the calibration measured these calls whole (DeviceRates.layerCallS), that measurement instead. */
  gpuLayerS(batchTokens: number, hiddenSize = 0): number {
    const g = this.calibration.gpu
    if (!g) return Infinity
    const measured = g.layerCallS && (this.gpuCallsInline(batchTokens) ? g.layerCallS.inline : g.layerCallS.offThread)
    if (measured?.length) return interpolate(measured, 4 * hiddenSize * batchTokens, g.layerOverheadS)
    const fresh = g.freshRows && g.freshRows.rows > 0 ? g.freshRows.seconds * Math.min(1, batchTokens / g.freshRows.rows) : 0
    const copies = (g.activationBytesPerS ? (4 * hiddenSize * batchTokens) / g.activationBytesPerS : 0) + fresh
    return g.layerOverheadS + copies + (this.gpuCallsInline(batchTokens) ? 0 : (g.asyncCallS ?? 0))
  }

  /** Whether a GPU call of `rows` rows with no CPU work beside it runs inline (runtime.ts: forward). */
  gpuCallsInline(rows: number): boolean {
    return rows <= (this.calibration.gpu?.inlineRows ?? Infinity)
  }

  /** What a CPU layer job of a batch of `batchTokens` costs more beside a GPU call (DeviceRates.besideGpuS;
   *  prefill sizes only: a decode-size job is joined by the calling thread and measured as it is). */
  cpuBesideGpuS(batchTokens: number): number {
    return this.gpuCallsInline(batchTokens) ? 0 : (this.calibration.cpu.besideGpuS ?? 0)
  }

  /** The extra cost of a GPU layer call handed to a libuv thread (0 when not measured). */
  gpuAsyncS(): number {
    return this.calibration.gpu?.asyncCallS ?? 0
  }
}

export function evalRoofline(r: Roofline, n: number): number {
  if (n <= 0) return 0
  const c = n * r.perTokenS
  return r.fixedS + Math.max(r.readS, c) + (r.serial > 0 ? r.serial * Math.min(r.readS, c) : 0) + n * r.rowS
}

/**
 * E[t(N)] for N ~ Binomial(batch, p): the expected time of an expert that each of `batch` tokens
 * picks with probability p. Using t(E[N]) instead would be badly wrong at decode: an expert with
 * 0.05 expected tokens still costs a full weight read whenever it is hit.
 * Exact, via max(a, nk) = a + k·(n − m)⁺ with m = a/k and E[(N−m)⁺] = E[N] − m + E[(m−N)⁺], whose
 * last term needs the pmf only below m (a handful of terms: m is the roofline's crossover).
 */
export function expectedRooflineTime(r: Roofline, batch: number, p: number): number {
  if (p <= 0 || batch <= 0) return 0
  if (!Number.isFinite(r.fixedS + r.readS + r.perTokenS + r.rowS)) return Infinity
  const q = Math.min(p, 1)
  const pEmpty = q >= 1 ? 0 : Math.exp(batch * Math.log1p(-q))
  const base = (1 - pEmpty) * (r.fixedS + r.readS) + r.rowS * batch * q
  if (r.perTokenS <= 0) return base
  // max + s·min = (1 − s)·max + s·(r + c): the expected sum is exact without the pmf.
  if (r.serial > 0) return (1 - r.serial) * expectedRooflineTime({ ...r, serial: 0 }, batch, p) + r.serial * (base + r.perTokenS * batch * q)
  const m = r.readS / r.perTokenS
  let below = 0 // E[(m − N)⁺]
  if (q < 1) {
    // In log space: P(N = 0) underflows for large batches while P(N = n < m) may still matter.
    let logPmf = batch * Math.log1p(-q)
    const logOdds = Math.log(q / (1 - q))
    for (let n = 0; n < m && n <= batch; n++) {
      below += (m - n) * Math.exp(logPmf)
      logPmf += Math.log((batch - n) / (n + 1)) + logOdds
    }
  } else if (batch < m) below = m - batch
  return base + r.perTokenS * (batch * q - m + below)
}

/** y at x on the polyline through (0, y0) and `points` ([x, y], x ascending), its last segment extended. */
function interpolate(points: readonly [number, number][], x: number, y0: number): number {
  let [x0, y] = [0, y0]
  for (let i = 0; i < points.length; i++) {
    const [x1, y1] = points[i]
    if (x <= x1 || i === points.length - 1) return x1 > x0 ? y + ((x - x0) * (y1 - y)) / (x1 - x0) : y1
    ;[x0, y] = [x1, y1]
  }
  return y0
}

function roofline(d: DeviceRates, e: ExpertShape): Roofline {
  return {
    fixedS: d.expertOverheadS,
    readS: e.bytes / rateFor(d.readBytesPerS, e.format),
    perTokenS: e.flopsPerToken / rateFor(d.flopsPerS, e.format),
    rowS: d.activationBytesPerS && e.hiddenSize ? (4 * e.hiddenSize) / d.activationBytesPerS : 0,
    serial: Math.min(1, Math.max(0, d.serial ?? 0)),
  }
}

/**
 * A format that was not calibrated borrows the rate of dense weights of the same dtype (then any
 * measured one): bytes already shrink with the format, so its bandwidth-bound time still does.
 */
function rateFor(rates: Partial<Record<FormatKey, number>>, key: FormatKey): number {
  const dtype = key.slice(key.indexOf('/') + 1)
  const r = rates[key] ?? rates[`dense/${dtype}` as FormatKey] ?? Object.values(rates).find((x) => x !== undefined)
  if (r === undefined || !(r > 0)) throw new RangeError(`calibration has no usable rate for ${key}`)
  return r
}
