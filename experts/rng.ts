// A small seeded PRNG that gives the same stream on every machine: 32-bit integer arithmetic only
// (Math.imul, >>>), no platform floats in the integer path. Used by synth and the RRE tables.

/** Mixes a 32-bit value (the splitmix32 / murmur3 finaliser). */
export function mix32(x: number): number {
  x = Math.imul(x ^ (x >>> 16), 0x85ebca6b)
  x = Math.imul(x ^ (x >>> 13), 0xc2b2ae35)
  return (x ^ (x >>> 16)) >>> 0
}

/** Derives a stream seed from a base seed and a path of small integers (layer, expert, matrix…). */
export function deriveSeed(seed: number, ...path: number[]): number {
  let h = mix32((seed >>> 0) ^ 0x9e3779b9)
  for (const p of path) h = mix32((h + Math.imul((p >>> 0) + 1, 0x9e3779b9)) >>> 0)
  return h
}

/** xorshift128 (Marsaglia), state seeded through splitmix32; never all-zero. */
export class Rng {
  #a: number
  #b: number
  #c: number
  #d: number
  #spare = NaN

  constructor(seed: number) {
    let s = seed >>> 0
    const next = () => {
      s = (s + 0x9e3779b9) >>> 0
      return mix32(s)
    }
    this.#a = next()
    this.#b = next()
    this.#c = next()
    this.#d = next() | 1
  }

  /** The xorshift128 state [a, b, c, d] (for hot loops that inline u32(); see synthMatrixBf16). */
  state(): [number, number, number, number] {
    return [this.#a, this.#b, this.#c, this.#d]
  }

  /** Uniform uint32. */
  u32(): number {
    let t = this.#a ^ (this.#a << 11)
    this.#a = this.#b
    this.#b = this.#c
    this.#c = this.#d
    this.#d = (this.#d ^ (this.#d >>> 19) ^ t ^ (t >>> 8)) >>> 0
    return this.#d
  }

  /** Uniform integer in [0, n), n ≤ 2^32, by 32×32 → high-32 multiply (exact, portable). */
  below(n: number): number {
    const x = this.u32()
    // (x * n) >>> 32 without losing bits: split n into 16-bit halves.
    const lo = (x & 0xffff) * n
    const hi = (x >>> 16) * n
    return Math.floor((hi + Math.floor(lo / 65536)) / 65536)
  }

  /** Uniform in (0, 1]: 32 random bits, never 0 (Box–Muller takes its log). */
  uniform(): number {
    return (this.u32() + 1) / 4294967296
  }

  /** Standard normal, Box–Muller (the second value of each pair is kept for the next call). */
  normal(): number {
    if (!Number.isNaN(this.#spare)) {
      const s = this.#spare
      this.#spare = NaN
      return s
    }
    const r = Math.sqrt(-2 * Math.log(this.uniform()))
    const th = 2 * Math.PI * this.uniform()
    this.#spare = r * Math.sin(th)
    return r * Math.cos(th)
  }
}
