// Deterministic synthetic models (`hetmoe synth`): the benchmark shapes of DESIGN.md with realistic
// weight statistics, streamed into a model store one matrix at a time.
//
// Weights: W[r][c] = z · σ · s_c with σ = 1/√cols (the N(0, 1/in) init of a trained-from-scratch
// linear layer) and s_c = 1 except for a few "outlier" input channels per matrix (0.5%, at least one)
// with s_c in [4, 8], as trained LLM activations/weights show. z is drawn per element from a pool of
// 65,536 Box–Muller normals made for that matrix from its own seed — indexing the pool with a
// xorshift stream costs ~1 ns per weight, where a fresh Box–Muller pair costs ~30 ns, and after bf16
// rounding the two are statistically indistinguishable. Every matrix has its own seed derived from
// (seed, layer, expert, which), so models are identical across runs and machines.
import { HetmoeError } from '../runtime/errors.js'
import { compress, prune, toBf16, toBf16Array } from './formats.js'
import type { DomainGroup, ExpertRef, FfnKind, LayerRef, MatrixRef, ModelManifest, WeightDtype, WeightFormat } from './manifest.js'
import { makeRreTable } from './rre-table.js'
import { deriveSeed, Rng } from './rng.js'
import { writeStore, type ManifestDraft, type StoreWriter } from './store-writer.js'
import { version } from '../runtime/version.js'

export type PresetName = 'tiny' | 'small' | 'sigma-lite' | 'mixtral' | 'fine'

export interface SynthPreset {
  name: string
  layers: number
  hidden: number
  inner: number
  ffn: FfnKind
  /** RRE: experts per domain group; gate: the number of experts in `experts`. */
  routing: { kind: 'rre'; domains: number; expertsPerDomain: number } | { kind: 'gate'; experts: number; topK: number; normalize: boolean }
  vocabSize: number
}

export const DOMAIN_NAMES = ['general', 'code', 'math', 'science', 'law', 'medicine', 'finance', 'chat']

export const PRESETS: Record<PresetName, SynthPreset> = {
  tiny: { name: 'tiny', layers: 2, hidden: 64, inner: 128, ffn: 'swiglu', routing: { kind: 'rre', domains: 2, expertsPerDomain: 4 }, vocabSize: 32000 },
  small: { name: 'small', layers: 4, hidden: 1024, inner: 2816, ffn: 'swiglu', routing: { kind: 'rre', domains: 4, expertsPerDomain: 8 }, vocabSize: 32000 },
  'sigma-lite': { name: 'sigma-lite', layers: 4, hidden: 2048, inner: 8192, ffn: 'gelu', routing: { kind: 'rre', domains: 4, expertsPerDomain: 16 }, vocabSize: 32000 },
  mixtral: { name: 'mixtral', layers: 1, hidden: 4096, inner: 14336, ffn: 'swiglu', routing: { kind: 'gate', experts: 8, topK: 2, normalize: true }, vocabSize: 32000 },
  fine: { name: 'fine', layers: 1, hidden: 2048, inner: 1408, ffn: 'swiglu', routing: { kind: 'gate', experts: 64, topK: 6, normalize: false }, vocabSize: 32000 },
}

export interface SynthOptions {
  /** A preset name, or a custom shape (tests). */
  preset: PresetName | SynthPreset
  out: string
  /** Defaults to 0. */
  seed?: number
  /** Defaults to 'dense'. */
  format?: WeightFormat
  /** Defaults to 'bf16'. */
  dtype?: WeightDtype
  /** Replace an existing directory at `out`. Defaults to false. */
  overwrite?: boolean
  /** Called after each expert with the experts done, the total, and the bytes written so far. */
  onProgress?: (done: number, total: number, bytes: number) => void
}

const MATRIX_IDS = { gate: 0, up: 1, down: 2 } as const
const POOL = 65536

/** Per-input-channel scale of one matrix: 1, except a few outlier channels in [4, 8]. */
function channelScales(rng: Rng, cols: number): Float32Array {
  const s = new Float32Array(cols).fill(1)
  const outliers = Math.max(1, Math.round(cols * 0.005))
  for (let i = 0; i < outliers; i++) s[rng.below(cols)] = 4 + 4 * rng.uniform()
  return s
}

function normalPool(rng: Rng, sigma: number): Float32Array {
  const pool = new Float32Array(POOL)
  for (let i = 0; i < POOL; i++) pool[i] = sigma * rng.normal()
  return pool
}

/** The synthetic weights of one matrix, fp32 [rows × cols]. */
export function synthMatrix(seed: number, rows: number, cols: number): Float32Array {
  const rng = new Rng(seed)
  const scales = channelScales(rng, cols)
  const pool = normalPool(rng, 1 / Math.sqrt(cols))
  const out = new Float32Array(rows * cols)
  let k = 0
  for (let r = 0; r < rows; r++)
    for (let c = 0; c < cols; c += 2) {
      const u = rng.u32()
      out[k++] = pool[u >>> 16] * scales[c]
      if (c + 1 < cols) out[k++] = pool[u & 0xffff] * scales[c + 1]
    }
  return out
}

/** The same weights as synthMatrix, straight to bf16 bits (the fast path of dense bf16 models). */
export function synthMatrixBf16(seed: number, rows: number, cols: number, out: Uint16Array = new Uint16Array(rows * cols)): Uint16Array {
  const rng = new Rng(seed)
  const scales = channelScales(rng, cols)
  const pool = normalPool(rng, 1 / Math.sqrt(cols))
  const poolBf = new Uint16Array(POOL)
  for (let i = 0; i < POOL; i++) poolBf[i] = toBf16(pool[i])
  // The hot loop of a 17 GB synth: the same stream as Rng.u32() (checked by a test against
  // synthMatrix), with its state in locals; outlier channels are patched afterwards.
  const st = rng.state()
  // int32 locals (| 0): uint32 values above 2^31 would be boxed as doubles in the loop.
  let a = st[0] | 0
  let b = st[1] | 0
  let c = st[2] | 0
  let d = st[3] | 0
  if (cols % 2 !== 0 || out.byteOffset % 4 !== 0) {
    out.set(toBf16Array(synthMatrix(seed, rows, cols)))
    return out
  }
  const plain = new Uint8Array(cols / 2)
  for (let p = 0; p < cols / 2; p++) plain[p] = scales[2 * p] === 1 && scales[2 * p + 1] === 1 ? 1 : 0
  const half = cols / 2
  // Two bf16 per uint32 store (little-endian: the first weight in the low half).
  const out32 = new Uint32Array(out.buffer, out.byteOffset, (rows * cols) / 2)
  let k = 0
  for (let r = 0; r < rows; r++) {
    for (let p = 0; p < half; p++, k++) {
      const t = a ^ (a << 11)
      a = b
      b = c
      c = d
      d = d ^ (d >>> 19) ^ t ^ (t >>> 8)
      if (plain[p] === 1) out32[k] = poolBf[d >>> 16] | (poolBf[d & 0xffff] << 16)
      else out32[k] = toBf16(pool[d >>> 16] * scales[2 * p]) | (toBf16(pool[d & 0xffff] * scales[2 * p + 1]) << 16)
    }
  }
  return out
}

export function matrixSeed(seed: number, layer: number, expert: number, which: keyof typeof MATRIX_IDS, shared = false): number {
  return deriveSeed(seed, layer, shared ? 0x10000 + expert : expert, MATRIX_IDS[which])
}

function resolvePreset(p: PresetName | SynthPreset): SynthPreset {
  if (typeof p !== 'string') return p
  const preset = PRESETS[p]
  if (!preset) throw new HetmoeError('BAD_OPTION', `unknown preset "${p}"; choose one of ${Object.keys(PRESETS).join(', ')}`)
  return preset
}

// Two scratch buffers per matrix shape, used in turn: one is being written to disk (on libuv's
// thread pool) while the next matrix is generated into the other. Fresh 33 MB arrays per matrix
// would cost more in page faults than generating them.
interface Slot {
  buf: Uint16Array
  busy?: Promise<void>
}
const scratch = new Map<number, { slots: [Slot, Slot]; next: number }>()

async function writeMatrix(w: StoreWriter, seed: number, rows: number, cols: number, format: WeightFormat, dtype: WeightDtype): Promise<MatrixRef> {
  if (format === 'dense' && dtype === 'bf16') {
    let s = scratch.get(rows * cols)
    if (!s) scratch.set(rows * cols, (s = { slots: [{ buf: new Uint16Array(rows * cols) }, { buf: new Uint16Array(rows * cols) }], next: 0 }))
    const slot = s.slots[s.next]
    s.next ^= 1
    await slot.busy
    synthMatrixBf16(seed, rows, cols, slot.buf)
    const { ref, written } = w.addBlobAsync(slot.buf)
    slot.busy = written.catch(() => undefined) // failures surface in w.flush()
    return { rows, cols, format, dtype, values: ref }
  }
  const dense = synthMatrix(seed, rows, cols)
  if (format === 'dense') return w.addMatrix({ rows, cols, format, dtype, values: dense })
  const { pruned, error } = prune(dense, rows, cols, format)
  return w.addMatrix(compress(pruned, rows, cols, format, dtype), error)
}

/** Generates a model into `out` (atomically: nothing is left there if it fails). */
export async function synthModel(options: SynthOptions): Promise<ModelManifest> {
  const p = resolvePreset(options.preset)
  const seed = options.seed ?? 0
  const format = options.format ?? 'dense'
  const dtype = options.dtype ?? 'bf16'
  if (format !== 'dense' && p.hidden % 16 !== 0) throw new HetmoeError('BAD_OPTION', `${format} needs D % 16 == 0`)
  if (format !== 'dense' && p.inner % 16 !== 0) throw new HetmoeError('BAD_OPTION', `${format} needs F % 16 == 0`)
  try {
    return await writeStore(options.out, { overwrite: options.overwrite }, (w) => synthLayers(w, p, seed, format, dtype, options))
  } finally {
    scratch.clear()
  }
}

async function synthLayers(w: StoreWriter, p: SynthPreset, seed: number, format: WeightFormat, dtype: WeightDtype, options: SynthOptions): Promise<ManifestDraft> {
  const total = p.layers * (p.routing.kind === 'rre' ? p.routing.domains * p.routing.expertsPerDomain : p.routing.experts)
  let done = 0
  const layers: LayerRef[] = []
  for (let li = 0; li < p.layers; li++) {
    let routing: LayerRef['routing']
    let E: number
    if (p.routing.kind === 'rre') {
      const { domains: nd, expertsPerDomain: n } = p.routing
      E = nd * n
      const domains: DomainGroup[] = Array.from({ length: nd }, (_, d) => ({ name: DOMAIN_NAMES[d] ?? `domain${d}`, firstExpert: d * n, numExperts: n }))
      const tableSeed = deriveSeed(seed, li, 0x7ab1e)
      routing = { kind: 'rre', seed: tableSeed, domains, table: w.addBlob(makeRreTable(tableSeed, domains.map((d) => d.numExperts), p.vocabSize)) }
    } else {
      E = p.routing.experts
      const g = synthMatrix(deriveSeed(seed, li, 0x6a7e), E, p.hidden)
      // Rows N(0, 1/D) (plus outlier channels): unit-variance inputs give logits of unit-ish spread.
      routing = { kind: 'gate', topK: p.routing.topK, normalize: p.routing.normalize, weight: w.addBlob(g) }
    }
    const experts: ExpertRef[] = []
    for (let e = 0; e < E; e++) {
      const gate = p.ffn === 'swiglu' ? await writeMatrix(w, matrixSeed(seed, li, e, 'gate'), p.inner, p.hidden, format, dtype) : undefined
      const up = await writeMatrix(w, matrixSeed(seed, li, e, 'up'), p.inner, p.hidden, format, dtype)
      const down = await writeMatrix(w, matrixSeed(seed, li, e, 'down'), p.hidden, p.inner, format, dtype)
      experts.push({ ...(gate ? { gate } : {}), up, down })
      options.onProgress?.(++done, total, w.bytesWritten)
      // Yield so a signal (Ctrl-C) can run its handler and remove the partial model.
      if (e % 4 === 3) await new Promise((r) => setImmediate(r))
    }
    layers.push({ index: li, experts, sharedExperts: [], routing })
  }
  await w.flush()
  return {
    name: `${p.name}${format === 'dense' ? '' : `-${format}`}-${dtype}-s${seed}`,
    origin: p.name,
    hiddenSize: p.hidden,
    ffnSize: p.inner,
    ffn: p.ffn,
    dtype,
    vocabSize: p.vocabSize,
    layers,
    provenance: { tool: `hetmoe synth ${version}`, preset: p.name, seed, format, created: new Date().toISOString() },
  }
}
