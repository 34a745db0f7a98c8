// Synthetic token streams for the demo, `hetmoe run --synthetic` and the benches: Zipf(s) over a
// vocabulary (a realistic skew: a few tokens dominate) and uniform. Seeded and portable.

/** A small seeded PRNG (mulberry32): same numbers on every machine. */
export function seededRandom(seed: number): () => number {
  let s = seed >>> 0
  return () => {
    s = (s + 0x6d2b79f5) >>> 0
    let z = s
    z = Math.imul(z ^ (z >>> 15), z | 1)
    z ^= z + Math.imul(z ^ (z >>> 7), z | 61)
    return ((z ^ (z >>> 14)) >>> 0) / 4294967296
  }
}

/** n token ids drawn from Zipf(s) over [0, vocab): P(rank r) ∝ 1/(r+1)^s, ranks shuffled over ids. */
export function zipfTokens(n: number, vocab: number, s = 1.1, seed = 1): Int32Array {
  const rnd = seededRandom(seed)
  const cdf = new Float64Array(vocab)
  let acc = 0
  for (let r = 0; r < vocab; r++) cdf[r] = acc += 1 / Math.pow(r + 1, s)
  // Frequent ranks land on scattered ids, as in a real tokenizer's vocabulary.
  const idOfRank = new Int32Array(vocab).map((_, i) => i)
  for (let i = vocab - 1; i > 0; i--) {
    const j = Math.floor(rnd() * (i + 1))
    ;[idOfRank[i], idOfRank[j]] = [idOfRank[j], idOfRank[i]]
  }
  const out = new Int32Array(n)
  for (let i = 0; i < n; i++) {
    const u = rnd() * acc
    let lo = 0
    let hi = vocab - 1
    while (lo < hi) {
      const mid = (lo + hi) >> 1
      if (cdf[mid] < u) lo = mid + 1
      else hi = mid
    }
    out[i] = idOfRank[lo]
  }
  return out
}

export function uniformTokens(n: number, vocab: number, seed = 1): Int32Array {
  const rnd = seededRandom(seed)
  return Int32Array.from({ length: n }, () => Math.floor(rnd() * vocab))
}

/** Hidden states for a batch: N(0,1)-ish values from a seed, fp32 [T × D]; written into `out` (the
 *  first T × D values) when given, so that a loop over batches leaves no garbage behind: at 4096 × 2048
 *  a fresh array a batch is 32 MiB, whose collection lands in whatever runs next. */
export function randomHidden(T: number, D: number, seed = 7, out?: Float32Array): Float32Array {
  const rnd = seededRandom(seed)
  if (out && out.length < T * D) throw new RangeError(`randomHidden: out holds ${out.length} values, fewer than ${T} × ${D}`)
  const h = out ? out.subarray(0, T * D) : new Float32Array(T * D)
  for (let i = 0; i < h.length; i++) h[i] = (rnd() + rnd() + rnd() - 1.5) * 2
  return h
}

/** The app's residual add between MoE layers, h += scale · out, in JavaScript: what `hetmoe run` does
 *  (stream-runner.ts, scale 1), and what the probes that time routing and layer calls do before them
 *  (route-cost.ts, calibration.ts; scale 1e-30, which leaves h's values), so that they read the rows
 *  as a runtime's forwards meet them. */
export function residualAdd(h: Float32Array, out: Float32Array, scale = 1): void {
  for (let i = 0; i < h.length; i++) h[i] += scale * out[i]
}

/** Values a fillRepeating copy moves at once (16 KiB): far below where memmove streams past the caches. */
const FILL_CHUNK = 4096

/**
 * Fills `out` with `scale` × `block`, repeated, with ordinary stores: hidden states as an app's
 * residual add leaves them between layers, dirty in this core's cache. (One TypedArray.set of a whole
 * batch copies with memmove, whose non-temporal stores on large copies leave nothing cached: the
 * device then read 256 such rows at full rate where sigma-lite's layers copied theirs in at a fifth of
 * it; calls 10-11, bench/results/h100-xeon16-2026-12-06. Copies of 16 KiB are 3x faster than a loop
 * over the values, which made `place` 0.5 s slower.)
 */
export function fillRepeating(out: Float32Array, block: Float32Array, scale = 1): void {
  // Scaled: only as much of the block as `out` takes (a one-row fill used to scale a 64-row block,
  // 512 KiB of garbage a call, which the app-loop probe's one-token loops paid for in collections).
  const src = scale === 1 ? block : block.subarray(0, Math.min(block.length, out.length)).map((v) => scale * v)
  for (let i = 0; i < out.length; i += src.length)
    for (let j = 0; j < src.length && i + j < out.length; j += FILL_CHUNK)
      out.set(src.subarray(j, Math.min(j + FILL_CHUNK, src.length, out.length - i)), i + j)
}
