// Structured-sparse formats on the TypeScript side: magnitude pruning, pattern detection, and exact
// compression to (and decompression from) the byte layouts defined in native/formats/layout.h.
// Dense matrices are Float32Array [rows × cols], row-major; y = W x.
import type { WeightDtype, WeightFormat } from './manifest.js'

export const CHUNK_75 = 128

const f32 = new Float32Array(1)
const u32 = new Uint32Array(f32.buffer)

/** fp32 → bf16 bits, round to nearest even (NaN stays NaN). Matches floatToBf16 in layout.h. */
export function toBf16(x: number): number {
  f32[0] = x
  const u = u32[0]
  if ((u & 0x7fffffff) > 0x7f800000) return ((u >>> 16) | 0x40) & 0xffff
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff
}

export function fromBf16(h: number): number {
  u32[0] = h << 16
  return f32[0]
}

export function toBf16Array(src: Float32Array, dst = new Uint16Array(src.length)): Uint16Array {
  // toBf16 inlined over the bit patterns (the hot loop of import and synth); same results.
  const u = new Uint32Array(src.buffer, src.byteOffset, src.length)
  for (let i = 0; i < u.length; i++) {
    const x = u[i]
    dst[i] = (x & 0x7fffffff) > 0x7f800000 ? (x >>> 16) | 0x40 : (x + 0x7fff + ((x >>> 16) & 1)) >>> 16
  }
  return dst
}

export function fromBf16Array(src: Uint16Array, dst = new Float32Array(src.length)): Float32Array {
  const d = new Uint32Array(dst.buffer, dst.byteOffset, dst.length)
  for (let i = 0; i < src.length; i++) d[i] = src[i] << 16
  return dst
}

/** Rounds every element through bf16 (what a bf16 store keeps). */
export function roundToBf16(src: Float32Array): Float32Array {
  return fromBf16Array(toBf16Array(src))
}

export function relativeError(ref: Float32Array | Float64Array, approx: Float32Array | Float64Array): number {
  let num = 0
  let den = 0
  for (let i = 0; i < ref.length; i++) {
    const d = ref[i] - approx[i]
    num += d * d
    den += ref[i] * ref[i]
  }
  return den === 0 ? (num === 0 ? 0 : Infinity) : Math.sqrt(num / den)
}

function checkShape(w: Float32Array, rows: number, cols: number, format: WeightFormat): void {
  if (w.length !== rows * cols) throw new RangeError(`matrix has ${w.length} elements, expected ${rows}×${cols}`)
  if (format !== 'dense' && cols % 16 !== 0) throw new RangeError(`${format} needs cols % 16 == 0 (cols = ${cols})`)
  if (format === '75%' && rows % 2 !== 0) throw new RangeError(`75% needs an even number of rows (rows = ${rows})`)
}

/** The two positions (0..3) of group g that 2:4 keeps: the two largest magnitudes, in column order. */
function keep2(w: Float32Array, base: number): [number, number] {
  let a = 0
  let b = 1
  if (Math.abs(w[base + 1]) > Math.abs(w[base])) [a, b] = [1, 0]
  for (let i = 2; i < 4; i++) {
    const m = Math.abs(w[base + i])
    if (m > Math.abs(w[base + a])) [a, b] = [i, a]
    else if (m > Math.abs(w[base + b])) b = i
  }
  return a < b ? [a, b] : [b, a]
}

/** Sum of squares of what 2:4 keeps of row r in columns [c0, c1). */
function kept24Energy(w: Float32Array, cols: number, r: number, c0: number, c1: number): number {
  let e = 0
  for (let c = c0; c < c1; c += 4) {
    const [a, b] = keep2(w, r * cols + c)
    e += w[r * cols + c + a] ** 2 + w[r * cols + c + b] ** 2
  }
  return e
}

/** Magnitude pruning to a format; returns the pruned dense matrix and ‖W − pruned‖ / ‖W‖. */
export function prune(w: Float32Array, rows: number, cols: number, format: WeightFormat): { pruned: Float32Array; error: number } {
  checkShape(w, rows, cols, format)
  if (format === 'dense') return { pruned: w.slice(), error: 0 }
  const out = new Float32Array(w.length)
  const keepRow24 = (r: number, c0: number, c1: number) => {
    for (let c = c0; c < c1; c += 4) {
      const [a, b] = keep2(w, r * cols + c)
      out[r * cols + c + a] = w[r * cols + c + a]
      out[r * cols + c + b] = w[r * cols + c + b]
    }
  }
  if (format === '2:4') {
    for (let r = 0; r < rows; r++) keepRow24(r, 0, cols)
  } else {
    // 75%: per row pair and 128-column chunk, keep the row whose 2:4-pruned chunk holds more energy.
    for (let p = 0; p < rows / 2; p++) {
      for (let c0 = 0; c0 < cols; c0 += CHUNK_75) {
        const c1 = Math.min(c0 + CHUNK_75, cols)
        const odd = kept24Energy(w, cols, 2 * p + 1, c0, c1) > kept24Energy(w, cols, 2 * p, c0, c1)
        keepRow24(2 * p + (odd ? 1 : 0), c0, c1)
      }
    }
  }
  return { pruned: out, error: relativeError(w, out) }
}

/** Whether W already follows the format's pattern (then compression is lossless). */
export function followsPattern(w: Float32Array, rows: number, cols: number, format: WeightFormat): boolean {
  if (format === 'dense') return true
  checkShape(w, rows, cols, format)
  const nz24 = (r: number, c0: number, c1: number): boolean => {
    for (let c = c0; c < c1; c += 4) {
      let n = 0
      for (let i = 0; i < 4; i++) if (w[r * cols + c + i] !== 0) n++
      if (n > 2) return false
    }
    return true
  }
  const zero = (r: number, c0: number, c1: number): boolean => {
    for (let c = c0; c < c1; c++) if (w[r * cols + c] !== 0) return false
    return true
  }
  for (let r = 0; r < rows; r++) if (!nz24(r, 0, cols)) return false
  if (format === '2:4') return true
  for (let p = 0; p < rows / 2; p++)
    for (let c0 = 0; c0 < cols; c0 += CHUNK_75) {
      const c1 = Math.min(c0 + CHUNK_75, cols)
      if (!zero(2 * p, c0, c1) && !zero(2 * p + 1, c0, c1)) return false
    }
  return true
}

/** The stored parts of one matrix, as written to weights.bin. */
export interface PackedMatrix {
  rows: number
  cols: number
  format: WeightFormat
  dtype: WeightDtype
  values: Uint16Array | Float32Array
  meta?: Uint32Array
  select?: Uint8Array
}

/** Packs a matrix that already follows `format`'s pattern (prune() it first). Throws if it does not. */
export function compress(w: Float32Array, rows: number, cols: number, format: WeightFormat, dtype: WeightDtype): PackedMatrix {
  checkShape(w, rows, cols, format)
  const store = (vals: Float32Array) => (dtype === 'bf16' ? toBf16Array(vals) : vals)
  if (format === 'dense') return { rows, cols, format, dtype, values: store(w.slice()) }
  if (!followsPattern(w, rows, cols, format)) throw new RangeError(`matrix does not follow the ${format} pattern; prune it first`)
  const srows = format === '75%' ? rows / 2 : rows
  const nChunks = Math.ceil(cols / CHUNK_75)
  const vals = new Float32Array(srows * (cols / 2))
  const meta = new Uint32Array(srows * (cols / 16))
  const select = format === '75%' ? new Uint8Array(srows * nChunks) : undefined
  for (let s = 0; s < srows; s++) {
    for (let g = 0; g < cols / 4; g++) {
      let r = s
      if (select) {
        const k = Math.floor((4 * g) / CHUNK_75)
        if (g % (CHUNK_75 / 4) === 0) {
          // The odd row is kept where the even row is all zero in this chunk and the odd one is not.
          const c0 = k * CHUNK_75
          const c1 = Math.min(c0 + CHUNK_75, cols)
          let evenNz = false
          for (let c = c0; c < c1 && !evenNz; c++) evenNz = w[2 * s * cols + c] !== 0
          select[s * nChunks + k] = evenNz ? 0 : 1
        }
        r = 2 * s + select[s * nChunks + k]
      }
      const base = r * cols + 4 * g
      const pos: number[] = []
      for (let i = 0; i < 4; i++) if (w[base + i] !== 0) pos.push(i)
      // Pad groups with fewer than two nonzeros with zero-valued positions, keeping first < second.
      for (let i = 0; pos.length < 2; i++) if (!pos.includes(i)) pos.push(i)
      pos.sort((x, y) => x - y)
      vals[s * (cols / 2) + 2 * g] = w[base + pos[0]]
      vals[s * (cols / 2) + 2 * g + 1] = w[base + pos[1]]
      meta[s * (cols / 16) + (g >> 3)] |= ((pos[0] | (pos[1] << 2)) << (4 * (g & 7))) >>> 0
    }
  }
  return { rows, cols, format, dtype, values: store(vals), meta, ...(select ? { select } : {}) }
}

/** Unpacks to dense fp32: the reference decoder (decodeRow in layout.h), whole matrix at once. */
export function decompress(m: PackedMatrix): Float32Array {
  const { rows, cols } = m
  // Stored values as fp32, decoded once (bf16 → fp32 is exact: the bits shifted up by 16).
  const vals = m.dtype === 'bf16' ? fromBf16Array(m.values as Uint16Array) : (m.values as Float32Array)
  const value = (i: number): number => vals[i]
  if (m.format === 'dense') return m.dtype === 'bf16' ? vals : vals.slice()
  const out = new Float32Array(rows * cols)
  const meta = m.meta!
  const nChunks = Math.ceil(cols / CHUNK_75)
  const srows = m.format === '75%' ? rows / 2 : rows
  for (let s = 0; s < srows; s++) {
    for (let g = 0; g < cols / 4; g++) {
      const r = m.format === '75%' ? 2 * s + m.select![s * nChunks + Math.floor((4 * g) / CHUNK_75)] : s
      const nib = (meta[s * (cols / 16) + (g >> 3)] >>> (4 * (g & 7))) & 0xf
      out[r * cols + 4 * g + (nib & 3)] += value(s * (cols / 2) + 2 * g)
      out[r * cols + 4 * g + (nib >> 2)] += value(s * (cols / 2) + 2 * g + 1)
    }
  }
  return out
}

/** Bytes a matrix takes in each part (for planning GPU memory and for the store writer). */
export function packedBytes(rows: number, cols: number, format: WeightFormat, dtype: WeightDtype): { values: number; meta: number; select: number; total: number } {
  const el = dtype === 'bf16' ? 2 : 4
  if (format === 'dense') return { values: rows * cols * el, meta: 0, select: 0, total: rows * cols * el }
  const srows = format === '75%' ? rows / 2 : rows
  const values = srows * (cols / 2) * el
  const meta = srows * (cols / 16) * 4
  const select = format === '75%' ? srows * Math.ceil(cols / CHUNK_75) : 0
  return { values, meta, select, total: values + meta + select }
}
