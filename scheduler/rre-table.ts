// The Random Routed Experts table: for every domain group, each vocabulary id maps to one expert of
// the group, drawn uniformly from a seeded generator. The table is stored with the model, but
// synth and import draw it with makeRreTable, so a model re-synthesised from the same seed on
// another machine, OS or Node version routes identically.
//
// DO NOT CHANGE the generator, its seeding, the draw order (domain-major, then token id) or the
// rejection rule below: every model written with it would silently route differently from a
// re-synthesised copy. test/route-rre-table.test.ts pins the output with a golden hash.
//
// Generator: xoshiro128** (Blackman & Vigna), state seeded by four successive splitmix32 outputs of
// the 32-bit seed. All arithmetic is 32-bit (Math.imul, >>>), so no BigInt and no float rounding.
import type { DomainGroup } from '../experts/manifest.js'
import { badOption } from '../runtime/errors.js'

/** A seeded stream of uint32 values; identical everywhere for the same seed. */
export class Xoshiro128 {
  #s0: number
  #s1: number
  #s2: number
  #s3: number

  constructor(seed: number) {
    if (!Number.isInteger(seed) || seed < 0 || seed > 0xffffffff) throw badOption('seed', 'an integer in [0, 2^32)', seed)
    let x = seed | 0
    const next = (): number => {
      x = (x + 0x9e3779b9) | 0
      let z = x
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b)
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35)
      return (z ^ (z >>> 16)) | 0
    }
    this.#s0 = next()
    this.#s1 = next()
    this.#s2 = next()
    this.#s3 = next()
  }

  /** The next value in [0, 2^32). */
  nextU32(): number {
    const s1 = this.#s1
    const r = Math.imul(rotl(Math.imul(s1, 5), 7), 9) >>> 0
    const t = s1 << 9
    this.#s2 ^= this.#s0
    this.#s3 ^= this.#s1
    this.#s1 ^= this.#s2
    this.#s0 ^= this.#s3
    this.#s2 ^= t
    this.#s3 = rotl(this.#s3, 11)
    return r
  }

  /** Uniform in [0, n), n ≤ 2^32: rejection keeps it unbiased (draws ≥ the largest multiple of n are redrawn). */
  below(n: number): number {
    const limit = 0x100000000 - (0x100000000 % n)
    for (;;) {
      const x = this.nextU32()
      if (x < limit) return x % n
    }
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k))
}

/**
 * Draws one layer's RRE table: int32 [domains.length × vocabSize], row d holding, for every token id,
 * an expert index within domain d's group, in [0, domains[d].numExperts).
 */
export function makeRreTable(seed: number, domains: readonly Pick<DomainGroup, 'numExperts'>[], vocabSize: number): Int32Array {
  if (!Number.isInteger(vocabSize) || vocabSize <= 0) throw badOption('vocabSize', 'a positive integer', vocabSize)
  if (domains.length === 0) throw badOption('domains', 'a non-empty list of domain groups', '[]')
  for (const d of domains)
    if (!Number.isInteger(d.numExperts) || d.numExperts <= 0) throw badOption('domains[].numExperts', 'a positive integer', d.numExperts)
  const rng = new Xoshiro128(seed)
  const table = new Int32Array(domains.length * vocabSize)
  for (let d = 0; d < domains.length; d++) {
    const n = domains[d].numExperts
    const row = d * vocabSize
    for (let t = 0; t < vocabSize; t++) table[row + t] = rng.below(n)
  }
  return table
}
