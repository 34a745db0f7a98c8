// Shared by the GPU tests: random weights encoded in the layout.h formats (what experts/ writes), the
// reference decoder, a weights file of test experts, and a float64 reference for one token row.
import { writeFileSync } from 'node:fs'
import { GpuBackend } from '../../runtime/gpu-backend.js'
import type { NativeGpuMatrix } from '../../runtime/native.js'

/** Why the GPU tests skip here (no GPU, or no CUDA build), or false where they run. */
export function gpuSkipReason(): string | false {
  try {
    const a = GpuBackend.available()
    return a.available ? false : `no GPU: ${a.reason ?? 'unavailable'}`
  } catch (e) {
    return `no GPU: ${(e as Error).message}`
  }
}

// --- random numbers, bf16, layout.h encoders (what experts/ writes) and the reference decoder ----
export function rng(seed: number): () => number {
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
export function toBf16(x: number): number {
  f32[0] = x
  let u = u32[0]
  if ((u & 0x7fffffff) > 0x7f800000) return ((u >>> 16) | 0x40) & 0xffff
  u = (u + 0x7fff + ((u >>> 16) & 1)) >>> 0
  return u >>> 16
}
export function fromBf16(h: number): number {
  u32[0] = (h << 16) >>> 0
  return f32[0]
}

export type Format = 'dense' | '2:4' | '75%'
export type Dtype = 'bf16' | 'fp32'
export interface Encoded {
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

export function encode(w: Float64Array, rows: number, cols: number, format: Format, dtype: Dtype): Encoded {
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
export function decode(m: Encoded): Float64Array {
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
export interface TestExpert {
  key: string
  ffn: 'swiglu' | 'gelu'
  D: number
  F: number
  refs: { gate?: NativeGpuMatrix; up: NativeGpuMatrix; down: NativeGpuMatrix }
  dense: { gate?: Float64Array; up: Float64Array; down: Float64Array }
}

export function buildFile(path: string, specs: { key: string; ffn: 'swiglu' | 'gelu'; D: number; F: number; format: Format; dtype: Dtype; seed: number }[]): TestExpert[] {
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

export function referenceRow(e: TestExpert, x: Float32Array, xOff: number, scale: number): Float64Array {
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
