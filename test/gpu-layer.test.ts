// GPU backend: the layer kernel in every format against a float64 reference computed here from the
// layout.h bytes (the reference decoder's semantics), random weights, inputs and routings, experts
// with 0 tokens and token counts that are not multiples of any tile; outputs poisoned with NaN and
// every element checked (written rows close to the reference, other rows untouched). Skips cleanly
// where no GPU (or no CUDA build) exists, as on CI.
import t from 'tap'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GpuBackend } from '../runtime/gpu-backend.js'
import { Arena } from '../runtime/arena.js'
import { native, type NativeGpuMatrix } from '../runtime/native.js'
import { HetmoeError } from '../runtime/errors.js'

function gpuSkipReason(): string | false {
  try {
    const a = GpuBackend.available()
    return a.available ? false : `no GPU: ${a.reason ?? 'unavailable'}`
  } catch (e) {
    return `no GPU: ${(e as Error).message}`
  }
}
const skip = gpuSkipReason()

// --- random numbers, bf16, layout.h encoders (what experts/ writes) and the reference decoder ----
function rng(seed: number): () => number {
  let s = seed >>> 0 || 1
  return () => {
    s ^= s << 13
    s >>>= 0
    s ^= s >>> 17
    s ^= s << 5
    s >>>= 0
    return s / 4294967296
  }
}
const f32 = new Float32Array(1)
const u32 = new Uint32Array(f32.buffer)
function toBf16(x: number): number {
  f32[0] = x
  let u = u32[0]
  if ((u & 0x7fffffff) > 0x7f800000) return ((u >>> 16) | 0x40) & 0xffff
  u = (u + 0x7fff + ((u >>> 16) & 1)) >>> 0
  return u >>> 16
}
function fromBf16(h: number): number {
  u32[0] = (h << 16) >>> 0
  return f32[0]
}

type Format = 'dense' | '2:4' | '75%'
type Dtype = 'bf16' | 'fp32'
interface Encoded {
  rows: number
  cols: number
  format: Format
  dtype: Dtype
  values: Uint8Array
  meta?: Uint8Array
  select?: Uint8Array
}

function encodeValues(v: number[], dtype: Dtype): Uint8Array {
  if (dtype === 'fp32') return new Uint8Array(new Float32Array(v).buffer)
  return new Uint8Array(new Uint16Array(v.map(toBf16)).buffer)
}

/** Two largest magnitudes of w[c..c+3], in column order. */
function keep24(w: Float64Array, base: number): [number, number] {
  const idx = [0, 1, 2, 3].sort((a, b) => Math.abs(w[base + b]) - Math.abs(w[base + a]))
  const [a, b] = [idx[0], idx[1]]
  return a < b ? [a, b] : [b, a]
}

function encode(w: Float64Array, rows: number, cols: number, format: Format, dtype: Dtype): Encoded {
  if (format === 'dense') return { rows, cols, format, dtype, values: encodeValues(Array.from(w), dtype) }
  const srows = format === '75%' ? rows / 2 : rows
  const chunks = Math.ceil(cols / 128)
  const vals: number[] = new Array(srows * (cols / 2)).fill(0)
  const meta = new Uint32Array(srows * (cols / 16))
  const select = new Uint8Array(format === '75%' ? srows * chunks : 0)
  const put = (srow: number, row: number, c0: number, c1: number) => {
    for (let c = c0; c < c1; c += 4) {
      const g = c / 4
      const [i0, i1] = keep24(w, row * cols + c)
      vals[srow * (cols / 2) + 2 * g] = w[row * cols + c + i0]
      vals[srow * (cols / 2) + 2 * g + 1] = w[row * cols + c + i1]
      meta[srow * (cols / 16) + (g >> 3)] |= ((i0 | (i1 << 2)) << (4 * (g & 7))) >>> 0
    }
  }
  if (format === '2:4') for (let r = 0; r < rows; r++) put(r, r, 0, cols)
  else {
    for (let p = 0; p < srows; p++)
      for (let k = 0; k < chunks; k++) {
        const c0 = k * 128, c1 = Math.min(cols, c0 + 128)
        const norm = [0, 1].map((h) => {
          let s = 0
          for (let c = c0; c < c1; c += 4) {
            const [i0, i1] = keep24(w, (2 * p + h) * cols + c)
            s += Math.abs(w[(2 * p + h) * cols + c + i0]) + Math.abs(w[(2 * p + h) * cols + c + i1])
          }
          return s
        })
        const keep = norm[1] > norm[0] ? 1 : 0
        select[p * chunks + k] = keep
        put(p, 2 * p + keep, c0, c1)
      }
  }
  return {
    rows,
    cols,
    format,
    dtype,
    values: encodeValues(vals, dtype),
    meta: new Uint8Array(meta.buffer),
    select: format === '75%' ? select : undefined,
  }
}

/** layout.h decodeRow, for every row: the dense matrix the kernels must multiply by. */
function decode(m: Encoded): Float64Array {
  const { rows, cols } = m
  const vals = m.dtype === 'bf16' ? Array.from(new Uint16Array(m.values.buffer, m.values.byteOffset, m.values.byteLength / 2), fromBf16)
    : Array.from(new Float32Array(m.values.buffer, m.values.byteOffset, m.values.byteLength / 4))
  const out = new Float64Array(rows * cols)
  if (m.format === 'dense') {
    for (let i = 0; i < rows * cols; i++) out[i] = vals[i]
    return out
  }
  const meta = new Uint32Array(m.meta!.buffer, m.meta!.byteOffset, m.meta!.byteLength / 4)
  const chunks = Math.ceil(cols / 128)
  for (let r = 0; r < rows; r++) {
    const srow = m.format === '75%' ? r >> 1 : r
    for (let g = 0; g < cols / 4; g++) {
      if (m.format === '75%' && m.select![srow * chunks + Math.floor((4 * g) / 128)] !== (r & 1)) continue
      const nib = (meta[srow * (cols / 16) + (g >> 3)] >>> (4 * (g & 7))) & 0xf
      out[r * cols + 4 * g + (nib & 3)] += vals[srow * (cols / 2) + 2 * g]
      out[r * cols + 4 * g + (nib >> 2)] += vals[srow * (cols / 2) + 2 * g + 1]
    }
  }
  return out
}

// --- a weights file with a few experts ------------------------------------------------------------
interface TestExpert {
  key: string
  ffn: 'swiglu' | 'gelu'
  D: number
  F: number
  refs: { gate?: NativeGpuMatrix; up: NativeGpuMatrix; down: NativeGpuMatrix }
  dense: { gate?: Float64Array; up: Float64Array; down: Float64Array }
}

function buildFile(path: string, specs: { key: string; ffn: 'swiglu' | 'gelu'; D: number; F: number; format: Format; dtype: Dtype; seed: number }[]): TestExpert[] {
  const blobs: Uint8Array[] = []
  let offset = 0
  const add = (b: Uint8Array) => {
    const at = offset
    blobs.push(b)
    const padded = Math.ceil(b.byteLength / 4096) * 4096
    if (padded > b.byteLength) blobs.push(new Uint8Array(padded - b.byteLength))
    offset += padded
    return { offset: at, bytes: b.byteLength }
  }
  const experts: TestExpert[] = []
  for (const s of specs) {
    const r = rng(s.seed)
    const mk = (rows: number, cols: number) => {
      const w = new Float64Array(rows * cols)
      const scale = 1 / Math.sqrt(cols)
      for (let i = 0; i < w.length; i++) w[i] = (2 * r() - 1) * scale * 1.7
      const e = encode(w, rows, cols, s.format, s.dtype)
      const ref: NativeGpuMatrix = { rows, cols, format: s.format, dtype: s.dtype, values: add(e.values) }
      if (e.meta) ref.meta = add(e.meta)
      if (e.select) ref.select = add(e.select)
      return { ref, dense: decode(e) }
    }
    const gate = s.ffn === 'swiglu' ? mk(s.F, s.D) : undefined
    const up = mk(s.F, s.D)
    const down = mk(s.D, s.F)
    experts.push({
      key: s.key,
      ffn: s.ffn,
      D: s.D,
      F: s.F,
      refs: { gate: gate?.ref, up: up.ref, down: down.ref },
      dense: { gate: gate?.dense, up: up.dense, down: down.dense },
    })
  }
  const all = new Uint8Array(offset)
  let at = 0
  for (const b of blobs) {
    all.set(b, at)
    at += b.byteLength
  }
  writeFileSync(path, all)
  return experts
}

function referenceRow(e: TestExpert, x: Float32Array, xOff: number, scale: number): Float64Array {
  const { D, F } = e
  const h = new Float64Array(F)
  for (let f = 0; f < F; f++) {
    let u = 0, g = 0
    for (let d = 0; d < D; d++) u += e.dense.up[f * D + d] * x[xOff + d]
    if (e.ffn === 'swiglu') {
      for (let d = 0; d < D; d++) g += e.dense.gate![f * D + d] * x[xOff + d]
      h[f] = (g / (1 + Math.exp(-g))) * u
    } else {
      h[f] = 0.5 * u * (1 + Math.tanh(0.7978845608028654 * (u + 0.044715 * u * u * u)))
    }
  }
  const y = new Float64Array(D)
  for (let d = 0; d < D; d++) {
    let s = 0
    for (let f = 0; f < F; f++) s += e.dense.down[d * F + f] * h[f]
    y[d] = scale * s
  }
  return y
}

t.test('GPU layer kernel matches a float64 reference in every format', { skip }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'hetmoe-gpu-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const file = join(dir, 'weights.bin')
  const D = 256
  const specs = [
    { key: 'dense-a', ffn: 'swiglu' as const, D, F: 320, format: 'dense' as Format, dtype: 'bf16' as Dtype, seed: 11 },
    { key: 'dense-b', ffn: 'gelu' as const, D, F: 192, format: 'dense' as Format, dtype: 'fp32' as Dtype, seed: 12 },
    { key: 's24-a', ffn: 'swiglu' as const, D, F: 320, format: '2:4' as Format, dtype: 'bf16' as Dtype, seed: 13 },
    { key: 's24-b', ffn: 'swiglu' as const, D, F: 320, format: '2:4' as Format, dtype: 'bf16' as Dtype, seed: 14 },
    { key: 's24-c', ffn: 'gelu' as const, D, F: 192, format: '2:4' as Format, dtype: 'fp32' as Dtype, seed: 15 },
    { key: 's75-a', ffn: 'swiglu' as const, D, F: 320, format: '75%' as Format, dtype: 'bf16' as Dtype, seed: 16 },
    { key: 's75-b', ffn: 'swiglu' as const, D, F: 320, format: '75%' as Format, dtype: 'bf16' as Dtype, seed: 17 },
    { key: 's75-c', ffn: 'gelu' as const, D, F: 192, format: '75%' as Format, dtype: 'fp32' as Dtype, seed: 18 },
  ]
  const experts = buildFile(file, specs)
  const { id } = native().mapWeights(file)
  t.teardown(() => native().unmapWeights(id))

  const arena = new Arena({ bytes: 16 << 20 })
  const notes: string[] = []
  const gpu = GpuBackend.open({ arena, warn: (l) => notes.push(l) })
  t.teardown(() => gpu.close())
  t.comment(`device: ${gpu.deviceName}; arena registration: ${gpu.registration || 'ok'}`)
  let total = 0
  for (const e of experts) total += gpu.upload(e.key, id, e.ffn, e.refs)
  t.equal(gpu.bytesUsed, total, 'bytesUsed is the sum of the uploads')
  t.ok(experts.every((e) => gpu.isResident(e.key)), 'all experts resident')
  t.equal(gpu.resident().length, experts.length)

  const r = rng(99)
  // Token counts: 0, 1, 7, 9, 17, 33, 40, 100 ... (not multiples of 8/16/32); one expert gets 0.
  // The last two sets reach the large-batch kernel (sm_90: format groups whose largest expert has
  // >= 32 tokens, see moe_launch.cuh), with counts that are not multiples of its 64/128/256-token
  // tiles and 0- and 1-token experts in a large group. bench/gpu/device-run.sh also runs this file
  // with HETMOE_WGMMA_MIN=1 (every group on the large-batch kernel).
  const counts = [
    [0, 3, 9, 17, 1, 33, 40, 7],
    [100, 0, 5, 0, 64, 2, 13, 31],
    [1, 1, 1, 1, 1, 1, 1, 1],
    [300, 1100, 0, 65, 1100, 300, 257, 129],
    [64, 63, 1100, 1, 300, 0, 77, 1100],
  ]
  for (let round = 0; round < counts.length * 2; round++) {
    const useArena = round % 2 === 0
    const cnt = counts[Math.floor(round / 2)]
    const T = Math.max(120, Math.max(...cnt))
    const totalSel = cnt.reduce((a, b) => a + b, 0)
    const outRowsN = totalSel + 17 // extra rows that must stay untouched
    const lease = useArena ? arena.lease(4 * D * (T + outRowsN)) : undefined
    const hidden = lease ? new Float32Array(arena.buffer, lease.offset, T * D) : new Float32Array(T * D)
    const out = lease ? new Float32Array(arena.buffer, lease.offset + 4 * T * D, outRowsN * D) : new Float32Array(outRowsN * D)
    for (let i = 0; i < hidden.length; i++) hidden[i] = 2 * r() - 1
    out.fill(NaN)
    // distinct out rows across the call, in random order
    const perm = Array.from({ length: outRowsN }, (_, i) => i).sort(() => r() - 0.5)
    let next = 0
    const calls = experts.map((e, k) => {
      const n = cnt[k]
      const tokenRows = Int32Array.from({ length: n }, () => Math.floor(r() * T))
      const outRows = Int32Array.from({ length: n }, () => perm[next++])
      const scale = k % 3 === 2 ? undefined : Float32Array.from({ length: n }, () => 0.1 + r())
      return { key: e.key, tokenRows, outRows, scale }
    })
    const timing = await gpu.runLayer({ experts: calls, hidden, out })
    t.equal(timing.staged, !useArena || gpu.registration !== '', `round ${round}: staged flag`)
    let worst = 0
    let written = 0
    const writtenRows = new Set<number>()
    for (let k = 0; k < experts.length; k++) {
      const c = calls[k]
      let num = 0, den = 0
      let finite = true
      for (let i = 0; i < c.tokenRows.length; i++) {
        const ref = referenceRow(experts[k], hidden, c.tokenRows[i] * D, c.scale ? c.scale[i] : 1)
        const o = c.outRows[i] * D
        writtenRows.add(c.outRows[i])
        for (let d = 0; d < D; d++) {
          const v = out[o + d]
          if (!Number.isFinite(v)) finite = false
          num += (v - ref[d]) ** 2
          den += ref[d] ** 2
          written++
        }
      }
      if (c.tokenRows.length === 0) continue
      const rel = Math.sqrt(num / den)
      worst = Math.max(worst, rel)
      t.ok(finite && rel <= 1e-2, `round ${round} ${experts[k].key} (${specs[k].format}/${specs[k].dtype}/${specs[k].ffn}) n=${c.tokenRows.length}: rel err ${rel.toExponential(2)}`)
    }
    let untouched = true
    for (let row = 0; row < outRowsN; row++)
      if (!writtenRows.has(row)) for (let d = 0; d < D; d++) untouched &&= Number.isNaN(out[row * D + d])
    t.ok(untouched, `round ${round}: rows not selected stay untouched`)
    t.comment(`round ${round} (${useArena ? 'arena' : 'staged'}): ${written} elements checked, worst rel err ${worst.toExponential(2)}, gpu ${timing.gpuMs.toFixed(3)} ms`)
    if (lease) lease.release()
  }

  t.ok(gpu.evict('s24-b'), 'evict')
  t.notOk(gpu.isResident('s24-b'))
  t.notOk(gpu.evict('s24-b'), 'evicting twice says false')
  await t.rejects(
    gpu.runLayer({ experts: [{ key: 's24-b', tokenRows: Int32Array.of(0), outRows: Int32Array.of(0) }], hidden: new Float32Array(D), out: new Float32Array(D), D }),
    { code: 'GPU_ERROR' },
    'a non-resident expert is an error',
  )
  await t.rejects(
    gpu.runLayer({ experts: [{ key: 's24-a', tokenRows: Int32Array.of(5), outRows: Int32Array.of(0) }], hidden: new Float32Array(D), out: new Float32Array(D) }),
    { code: 'GPU_ERROR' },
    'a token row outside hidden is an error',
  )
})

t.test('GPU cache budget: a full cache is GPU_OOM', { skip }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'hetmoe-gpu-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const file = join(dir, 'weights.bin')
  const [e] = buildFile(file, [{ key: 'x', ffn: 'swiglu', D: 128, F: 128, format: '2:4', dtype: 'bf16', seed: 3 }])
  const { id } = native().mapWeights(file)
  t.teardown(() => native().unmapWeights(id))
  const gpu = GpuBackend.open({ budgetBytes: 40000 })
  t.teardown(() => gpu.close())
  t.throws(() => gpu.upload('x', id, 'swiglu', e.refs), (err: unknown) => err instanceof HetmoeError && err.code === 'GPU_OOM')
  t.equal(gpu.bytesUsed, 0, 'a failed upload leaves nothing behind')
})

t.test('GPU backend reports why it is unavailable', async (t) => {
  const a = GpuBackend.available()
  t.type(a.available, 'boolean')
  if (!a.available) t.type(a.reason, 'string')
})
