// Combining expert outputs into the layer output. Top-1 routing writes straight into the output
// rows, so there is nothing to combine; top-k routing writes each (token, slot) to its own row and
// the sum runs here in a fixed slot order, so results never depend on which backend finished first.
import { native } from './native.js'
import type { CpuCrew } from './cpu-crew.js'

/**
 * out[t] = Σ_{k<K} rows[t·K + k]  (+ g[t] · Σ_s shared[s·T + t]), in that order, fp32 (native: at a
 * real model's width this loop cost 15-270 µs a layer in JavaScript).
 * `rows` holds T·K rows of D floats; `shared` holds S blocks of T rows (S may be 0); `sharedScale`
 * (Qwen2-MoE's sigmoid gate per token) scales the shared experts' sum, 1 when absent. With `crew`, large
 * sums are shared with its idle workers (CpuCrew.combine: the same bits).
 */
export function combineTopK(rows: Float32Array, shared: Float32Array | undefined, sharedCount: number, out: Float32Array, T: number, K: number, D: number, sharedScale?: Float32Array, crew?: CpuCrew): void {
  if (crew?.combine(rows, shared, sharedCount, out, T, K, D, sharedScale)) return
  native().combineRows(rows, shared ?? null, sharedCount, out, T, K, D, sharedScale ?? null)
}

/** Qwen2-MoE's shared-expert gate: sigmoid(g · x_t) per token, computed in float64. */
export function sharedGate(g: Float32Array, hidden: Float32Array, T: number, D: number): Float32Array {
  const out = new Float32Array(T)
  for (let t = 0; t < T; t++) {
    let z = 0
    for (let d = 0; d < D; d++) z += g[d] * hidden[t * D + d]
    out[t] = 1 / (1 + Math.exp(-z))
  }
  return out
}

/** dst.set(src), natively from 4096 floats on: TypedArray.set copies to or from a SharedArrayBuffer
 *  element by element (the arena is one), 1.8× slower than the native loop at 64 KB-512 KB (2-core VM). */
export function copyF32(dst: Float32Array, src: Float32Array): void {
  if (src.length >= 4096 && dst.length >= src.length) native().combineRows(src, null, 0, dst, 1, 1, src.length, null)
  else dst.set(src)
}

/** Copies T rows of D floats, shared with the crew's idle workers when large (a batch's hidden states
 *  into the arena, or its outputs out of it: 32 MiB at prefill's 4096 × 2048). */
export function copyRows(dst: Float32Array, src: Float32Array, T: number, D: number, crew: CpuCrew | undefined): void {
  if (crew?.combine(src, undefined, 0, dst, T, 1, D, undefined)) return
  copyF32(dst, src)
}
