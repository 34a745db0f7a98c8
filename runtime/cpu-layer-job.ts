// One MoE layer's CPU experts as one native job that every CPU worker joins. The job descriptor is
// written into the arena here and read by native/cpu/layer_job.cc; its word layout is documented in
// native/cpu/layer_job.h (the two must change together). The crew (runtime/cpu-crew.ts) is handed
// only the descriptor's offset; blocks of (expert x 128 output rows) are claimed from an atomic
// counter in it.
//
// Output: out[outRows[i]] = scales[i] * FFN_e(hidden[tokenRows[i]]), fp32, overwritten (rows not
// selected are not touched).
import type { ExpertRef, FfnKind, MatrixRef } from '../experts/manifest.js'
import type { Arena } from './arena.js'
import { HetmoeError } from './errors.js'
import { native, type CpuIsa } from './native.js'
import type { CpuCrew, CrewRunResult } from './cpu-crew.js'

/** Output rows per block (both phases); a multiple of 32 (AMX tiles work on 32-row steps). */
export const ROWS_PER_BLOCK = 128
/** The fewest rows per block: a job with too few blocks of ROWS_PER_BLOCK rows to go round the crew
 *  (two per thread) is cut finer, down to this. A tiny model's expert (F = 128, D = 64) is one block
 *  per phase at 128 rows, so one thread runs its whole phase 1 while another waits to run phase 2;
 *  at 32 rows four threads share phase 1. A block costs ~0.4 µs of set-up (2-core VM), which jobs
 *  with blocks to spare need not pay. */
export const MIN_ROWS_PER_BLOCK = 32
// HETMOE_CPU_BLOCK_ROWS: every job's rows per block (measurements); unset: blockRows() below.
const BLOCK_ROWS_ENV = (() => {
  const raw = process.env.HETMOE_CPU_BLOCK_ROWS
  if (raw === undefined || raw === '') return undefined
  const n = Number(raw)
  if (!Number.isInteger(n) || n < 32 || n % 32 !== 0) throw new RangeError(`HETMOE_CPU_BLOCK_ROWS must be a positive multiple of 32 (got "${raw}")`)
  return n
})()

/** HETMOE_CREW_SHARE_WORK (measurements): a posted job admits at most ⌊work / this⌋ of the crew's
 *  workers (at least one; work = weight bytes × tokens, as SOLO_MAX_WORK counts it), so that a small
 *  job is not contended by every spinning worker, each of which the retire then waits for. 0: no cap.
 *  Off by default: on the H100 machine (call 8) the tiny gated model's 16-token job (1.6 MFLOP) took as
 *  long with 12 workers and 3-4 µs longer with 6. */
const SHARE_WORK = (() => {
  const raw = process.env.HETMOE_CREW_SHARE_WORK
  const n = raw === undefined || raw === '' ? 0 : Number(raw)
  if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`HETMOE_CREW_SHARE_WORK must be a non-negative integer (got "${raw}")`)
  return n
})()
function maxWorkers(work: () => number): number {
  return SHARE_WORK > 0 ? Math.max(1, Math.floor(work() / SHARE_WORK)) : 0
}

const JOB_MAGIC = 0x314a4d48
const HEADER_WORDS = 32
const EXPERT_WORDS = 64
const BLOCK_WORDS = 4
const MATRIX_WORDS = 10
const ALIGN = 64

export interface CpuLayerExpert {
  /** gate/up [F × D], down [D × F], byte ranges into the weights file (experts/manifest.ts). */
  matrices: ExpertRef
  /** int32 [count] rows of `hidden` routed to this expert. */
  tokens: { offset: number; count: number }
  /** int32 [count] rows of `out` to write, one per token. */
  outRows: { offset: number }
  /** fp32 [count] routing weights; absent: 1. */
  scales?: { offset: number }
}

/** All offsets are byte offsets into `arena.buffer`. */
export interface CpuLayerJob {
  /** Id from native().mapWeights(weights.bin). */
  weightsId: number
  ffn: FfnKind
  hiddenSize: number
  ffnSize: number
  /** fp32 [rows × hiddenSize]. */
  hidden: { offset: number; rows: number }
  /** fp32 [rows × hiddenSize]; `rows` defaults to hidden.rows (bounds checks of outRows). */
  out: { offset: number; rows?: number }
  experts: CpuLayerExpert[]
  /** Kernel level. Defaults to HETMOE_ISA, else the best this CPU runs. */
  isa?: CpuIsa
}

export interface CpuLayerStats {
  isa: CpuIsa
  blocks: number
  /** The calling (main) thread ran blocks too (small jobs). */
  joined: boolean
  /** The calling thread ran the whole job alone, posting nothing (the tiniest jobs). */
  solo: boolean
  /** The job was run again after a worker died. */
  retried: boolean
  ms: number
}

export interface RunCpuLayerOptions {
  /** Aborts the job: workers stop claiming blocks and the promise rejects with ABORTED. */
  signal?: AbortSignal
  /** Whether the calling thread runs blocks too; defaults to small jobs only (runtime/cpu-crew.ts). */
  join?: boolean
  /** Whether the calling thread runs the whole job alone, without the crew; defaults to the tiniest
   *  jobs only (runtime/cpu-crew.ts), never with `join: false` or testDieCount. */
  solo?: boolean
  /** The most of the crew's workers that may go into the job (0: any); defaults to
   *  HETMOE_CREW_SHARE_WORK's rule (above). */
  maxWorkers?: number
  /** Test only (honoured by workers when HETMOE_TEST_HOOKS=1): that many workers die holding a block. */
  testDieCount?: number
}

/** An encoded job: where its descriptor is, and the lease holding it (release when done). */
export interface EncodedCpuLayerJob {
  descOffset: number
  numBlocks: number
  isa: CpuIsa
  /** Bytes of weights the job reads. */
  weightBytes: number
  /** Weight bytes × tokens, summed over the experts (the crew runs the smallest jobs on the caller alone). */
  work: number
  release(): void
}

const up64 = (n: number): number => Math.ceil(n / ALIGN) * ALIGN
const padTokens = (n: number): number => Math.ceil(n / 32) * 32
const FORMAT = { dense: 0, '2:4': 1, '75%': 2 } as const
const DTYPE = { bf16: 0, fp32: 1 } as const
const ISA_INDEX: Record<CpuIsa, number> = { scalar: 0, avx2: 1, avx512: 2, avx512bf16: 3, amx: 4 }

function checkJob(job: CpuLayerJob): void {
  const bad = (what: string) => new HetmoeError('BAD_INPUT', `cpu layer job: ${what}`)
  if (!Number.isInteger(job.hiddenSize) || job.hiddenSize <= 0) throw bad('hiddenSize must be a positive integer')
  if (!Number.isInteger(job.ffnSize) || job.ffnSize <= 0) throw bad('ffnSize must be a positive integer')
  if (job.ffn !== 'swiglu' && job.ffn !== 'gelu') throw bad(`ffn must be "swiglu" or "gelu" (got ${String(job.ffn)})`)
  const badOffset = (o: number) => !Number.isInteger(o) || o < 0 || o % 4 !== 0
  for (let i = 0; i < job.experts.length; i++) {
    const e = job.experts[i]
    if (!Number.isInteger(e.tokens.count) || e.tokens.count < 0) throw bad(`expert ${i}: tokens.count must be a non-negative integer`)
    if ((job.ffn === 'swiglu') !== (e.matrices.gate !== undefined))
      throw bad(`expert ${i}: ${job.ffn === 'swiglu' ? 'SwiGLU needs a gate matrix' : 'GeLU experts have no gate matrix'}`)
    if (badOffset(e.tokens.offset) || badOffset(e.outRows.offset) || badOffset(e.scales?.offset ?? 0)) throw bad(`expert ${i}: offsets must be non-negative multiples of 4`)
  }
}

// Descriptor writers (module-level, so that encoding a job creates no closures).
function put64(w: Int32Array, i: number, v: number): void {
  if (v < 2 ** 31) {
    w[i] = v
    w[i + 1] = 0
  } else {
    w[i] = v % 2 ** 32 | 0
    w[i + 1] = Math.floor(v / 2 ** 32)
  }
}

function putMatrix(w: Int32Array, i: number, m: MatrixRef): void {
  w[i] = FORMAT[m.format]
  w[i + 1] = DTYPE[m.dtype]
  w[i + 2] = m.rows
  w[i + 3] = m.cols
  put64(w, i + 4, m.values.offset)
  put64(w, i + 6, m.meta?.offset ?? 0)
  put64(w, i + 8, m.select?.offset ?? 0)
}

const matrixBytes = (m: MatrixRef | undefined): number => (m ? m.values.bytes + (m.meta?.bytes ?? 0) + (m.select?.bytes ?? 0) : 0)

/** An expert's three matrix records as descriptor words (3 × MATRIX_WORDS; no gate: zeros) and its
 *  weight bytes, encoded once per expert: a decode forward encodes every active expert of every layer,
 *  and the expert refs are the model's own objects, the same each time. The values' offsets are
 *  checked on every use, so a ref changed in place is encoded again. */
interface EncodedExpert {
  words: Int32Array
  bytes: number
  gate: number
  up: number
  down: number
}
const encodedExperts = new WeakMap<ExpertRef, EncodedExpert>()
function encodedExpert(e: ExpertRef): EncodedExpert {
  const x = encodedExperts.get(e)
  if (x && x.up === e.up.values.offset && x.down === e.down.values.offset && x.gate === (e.gate?.values.offset ?? -1)) return x
  const words = new Int32Array(3 * MATRIX_WORDS)
  if (e.gate) putMatrix(words, 0, e.gate)
  putMatrix(words, MATRIX_WORDS, e.up)
  putMatrix(words, 2 * MATRIX_WORDS, e.down)
  const y = { words, bytes: matrixBytes(e.gate) + matrixBytes(e.up) + matrixBytes(e.down), gate: e.gate?.values.offset ?? -1, up: e.up.values.offset, down: e.down.values.offset }
  encodedExperts.set(e, y)
  return y
}

/** Rows per block for a job on a crew of `threads` workers (the main thread too): the most, up to
 *  ROWS_PER_BLOCK, that still give every thread two blocks; MIN_ROWS_PER_BLOCK when none does. */
export function blockRows(job: CpuLayerJob, threads: number): number {
  const want = 2 * (threads + 1)
  for (let rows = ROWS_PER_BLOCK; rows > MIN_ROWS_PER_BLOCK; rows /= 2)
    if (job.experts.length * (Math.ceil(job.ffnSize / rows) + Math.ceil(job.hiddenSize / rows)) >= want) return rows
  return MIN_ROWS_PER_BLOCK
}

/** The job's weight bytes, and its work: weight bytes × tokens, summed over its experts. */
export function jobSize(job: CpuLayerJob): { weightBytes: number; work: number } {
  let weightBytes = 0
  let work = 0
  for (const e of job.experts) {
    const bytes = encodedExpert(e.matrices).bytes
    weightBytes += bytes
    work += bytes * e.tokens.count
  }
  return { weightBytes, work }
}

// The last level resolved, per request (and HETMOE_ISA value when none is named): resolving asks the
// addon (about 1 µs on the 16-core Xeon), and a decode forward encodes a job per layer.
let lastIsa: { requested: string; env: string | undefined; isa: CpuIsa } | undefined
function resolveIsa(requested: CpuIsa | undefined): CpuIsa {
  const want = requested ?? ''
  const env = requested === undefined ? process.env.HETMOE_ISA : undefined
  if (lastIsa?.requested !== want || lastIsa.env !== env) lastIsa = { requested: want, env, isa: native().cpuResolveIsa(want).name }
  return lastIsa.isa
}

/**
 * Writes the job's descriptor and scratch into a fresh lease of `arena` (layout: native/cpu/layer_job.h):
 * header | expert table | block table | per expert: h fp32 [n × F], xPacked, hPacked (AMX only).
 */
export function encodeCpuLayerJob(arena: Arena, job: CpuLayerJob, options: { testDieCount?: number; rowsPerBlock?: number; maxWorkers?: number } = {}): EncodedCpuLayerJob {
  checkJob(job)
  const isa = resolveIsa(job.isa)
  const D = job.hiddenSize
  const F = job.ffnSize
  const experts = job.experts
  const ne = experts.length
  const rows = options.rowsPerBlock ?? ROWS_PER_BLOCK
  if (!Number.isInteger(rows) || rows < 32 || rows % 32 !== 0) throw new HetmoeError('BAD_INPUT', `cpu layer job: rowsPerBlock must be a positive multiple of 32 (got ${rows})`)
  const blocks1 = Math.ceil(F / rows)
  const blocks2 = Math.ceil(D / rows)
  const numBlocks = ne * (blocks1 + blocks2)
  const headerBytes = up64(HEADER_WORDS * 4)
  const expertBytes = up64(ne * EXPERT_WORDS * 4)
  const blockBytes = up64(numBlocks * BLOCK_WORDS * 4)
  const amx = isa === 'amx'
  // Per expert scratch: h fp32 [n × F], then (AMX) xPacked and hPacked.
  let scratchBytes = 0
  for (let i = 0; i < ne; i++) {
    const n = experts[i].tokens.count
    scratchBytes += up64(n * F * 4) + (amx ? up64(padTokens(n) * D * 2) + up64(padTokens(n) * F * 2) : 0)
  }
  const total = headerBytes + expertBytes + blockBytes + scratchBytes
  const lease = arena.lease(total, 4096)
  try {
    const base = lease.offset
    const w = new Int32Array(arena.buffer, base, (headerBytes + expertBytes + blockBytes) / 4)
    w.fill(0)
    const expertTable = base + headerBytes
    const blockTable = expertTable + expertBytes
    w[0] = JOB_MAGIC
    w[4] = ne
    w[5] = numBlocks
    w[6] = ne * blocks1
    w[7] = job.weightsId
    w[8] = job.ffn === 'swiglu' ? 0 : 1
    w[9] = D
    w[10] = F
    w[11] = ISA_INDEX[isa]
    w[12] = options.testDieCount ?? 0
    w[13] = job.hidden.rows
    w[14] = rows
    put64(w, 16, job.hidden.offset)
    put64(w, 18, job.out.offset)
    put64(w, 20, expertTable)
    put64(w, 22, blockTable)
    w[24] = job.out.rows ?? job.hidden.rows
    w[27] = options.maxWorkers ?? 0
    let scratchAt = blockTable + blockBytes
    const blockWord = (blockTable - base) / 4
    let weightBytes = 0
    let work = 0
    for (let ei = 0; ei < ne; ei++) {
      const e = experts[ei]
      const n = e.tokens.count
      const r = (expertTable - base) / 4 + ei * EXPERT_WORDS
      w[r] = n
      w[r + 1] = ei
      w[r + 2] = blocks1
      w[r + 3] = ne * blocks1 + ei
      w[r + 4] = blocks2
      w[r + 8] = (e.scales ? 1 : 0) | (e.matrices.gate ? 2 : 0)
      put64(w, r + 10, e.tokens.offset)
      put64(w, r + 12, e.outRows.offset)
      put64(w, r + 14, e.scales?.offset ?? 0)
      const h = up64(n * F * 4)
      const x = amx ? up64(padTokens(n) * D * 2) : 0
      const hp = amx ? up64(padTokens(n) * F * 2) : 0
      put64(w, r + 16, scratchAt)
      put64(w, r + 18, scratchAt + h)
      put64(w, r + 20, scratchAt + h + x)
      scratchAt += h + x + hp
      const enc = encodedExpert(e.matrices)
      w.set(enc.words, r + 24)
      const bytes = enc.bytes
      weightBytes += bytes
      work += bytes * n
      // Blocks are numbered round-robin over the experts (block k of expert e at k * ne + e), so the
      // first claims spread over all experts: their per-expert set-up (AMX packing) runs in parallel
      // and each expert's phase 1 finishes at about the same time. Block words: state, expert, row0, phase.
      for (let k = 0; k < blocks1; k++) {
        const i = blockWord + (k * ne + ei) * BLOCK_WORDS
        w[i + 1] = ei
        w[i + 2] = k * rows
        w[i + 3] = 1
      }
      for (let k = 0; k < blocks2; k++) {
        const i = blockWord + (ne * blocks1 + k * ne + ei) * BLOCK_WORDS
        w[i + 1] = ei
        w[i + 2] = k * rows
        w[i + 3] = 2
      }
    }
    return { descOffset: base, numBlocks, isa, weightBytes, work, release: () => lease.release() }
  } catch (err) {
    lease.release()
    throw err
  }
}

/** Runs a whole job on the calling thread (tests, benches, single-expert use). Synchronous. */
export function runCpuLayerSync(arena: Arena, job: CpuLayerJob): { isa: CpuIsa; blocks: number } {
  const enc = encodeCpuLayerJob(arena, job)
  try {
    const r = native().cpuLayerRun(new Uint8Array(arena.buffer), enc.descOffset, false)
    return { isa: enc.isa, blocks: r.blocks }
  } finally {
    enc.release()
  }
}

/**
 * Runs one layer's CPU experts on the crew: its workers (and, for a small job, the calling thread)
 * claim blocks until none is left. A worker that dies mid-job makes the others stop (abort flag),
 * the blocks it held are put back and the job runs once more; a second death is WORKER_DIED.
 */
export function runCpuLayer(crew: CpuCrew, arena: Arena, job: CpuLayerJob, options: RunCpuLayerOptions = {}): Promise<CpuLayerStats> {
  const t0 = performance.now()
  if (options.signal?.aborted) return Promise.reject(new HetmoeError('ABORTED', 'the CPU layer job was aborted before it started', { cause: options.signal.reason }))
  let enc: EncodedCpuLayerJob
  let solo: boolean
  // The job's work, summed over its experts at most once, and only when a rule below needs it.
  let size: number | undefined
  const work = () => (size ??= jobSize(job).work)
  try {
    // Alone or on the crew is decided first: the block size depends on it. A test death needs a worker.
    solo = options.testDieCount ? false : (options.solo ?? (options.join !== false && crew.runsAlone(work())))
    const rowsPerBlock = BLOCK_ROWS_ENV ?? (solo ? ROWS_PER_BLOCK : blockRows(job, crew.threads))
    enc = encodeCpuLayerJob(arena, job, { testDieCount: options.testDieCount, rowsPerBlock, maxWorkers: solo ? 0 : (options.maxWorkers ?? maxWorkers(work)) })
  } catch (err) {
    return Promise.reject(err)
  }
  if (enc.numBlocks === 0) {
    enc.release()
    return Promise.resolve({ isa: enc.isa, blocks: 0, joined: false, solo: false, retried: false, ms: performance.now() - t0 })
  }
  // A decode layer's job usually finishes here, synchronously (run alone, or joined and finished by the
  // one native call): no async frames or promise hops on top of the kernels.
  let now: CrewRunResult | Promise<CrewRunResult> | undefined
  try {
    now = crew.runNow(enc, { signal: options.signal, join: options.join, solo })
  } catch (err) {
    enc.release()
    return Promise.reject(err)
  }
  if (now && !(now instanceof Promise)) {
    enc.release()
    return Promise.resolve({ isa: enc.isa, blocks: enc.numBlocks, joined: now.joined, solo: now.solo, retried: now.retried, ms: performance.now() - t0 })
  }
  return runOnCrew(crew, enc, options, solo, t0, now)
}

async function runOnCrew(crew: CpuCrew, enc: EncodedCpuLayerJob, options: RunCpuLayerOptions, solo: boolean, t0: number, started?: Promise<CrewRunResult>): Promise<CpuLayerStats> {
  try {
    const r = await (started ?? crew.run(enc, { signal: options.signal, join: options.join, solo }))
    return { isa: enc.isa, blocks: enc.numBlocks, joined: r.joined, solo: r.solo, retried: r.retried, ms: performance.now() - t0 }
  } finally {
    enc.release()
  }
}
