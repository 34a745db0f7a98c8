// Combining expert outputs into the layer output. Top-1 routing writes straight into the output
// rows, so there is nothing to combine; top-k routing writes each (token, slot) to its own row and
// the sum runs here in a fixed slot order, so results never depend on which backend finished first.

/**
 * out[t] = Σ_{k<K} rows[t·K + k]  (+ Σ_s shared[s·T + t]), in that order, fp32.
 * `rows` holds T·K rows of D floats; `shared` holds S blocks of T rows (S may be 0).
 */
export function combineTopK(rows: Float32Array, shared: Float32Array | undefined, sharedCount: number, out: Float32Array, T: number, K: number, D: number): void {
  for (let t = 0; t < T; t++) {
    const o = t * D
    const r0 = t * K * D
    for (let d = 0; d < D; d++) out[o + d] = rows[r0 + d]
    for (let k = 1; k < K; k++) {
      const rk = r0 + k * D
      for (let d = 0; d < D; d++) out[o + d] += rows[rk + d]
    }
    for (let s = 0; s < sharedCount; s++) {
      const rs = (s * T + t) * D
      for (let d = 0; d < D; d++) out[o + d] += shared![rs + d]
    }
  }
}
