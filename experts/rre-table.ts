// Random Routed Experts (PanGu-Σ) routing tables: for every domain group, each vocabulary id maps to
// one expert of that group, uniformly at random, drawn once from a seed. The draw uses integer
// arithmetic only (experts/rng.ts), so a seed gives the same table on every machine; a golden test
// pins it (test/synth-rre-table.test.ts). Changing this function changes every synthesised model.
import { deriveSeed, Rng } from './rng.js'

/**
 * int32 [domains.length × vocabSize]: row d, column tokenId = expert index within group d, in
 * [0, domains[d]). `domains` gives the number of experts of each group.
 */
export function makeRreTable(seed: number, domains: readonly number[], vocabSize: number): Int32Array {
  if (!Number.isInteger(vocabSize) || vocabSize <= 0) throw new RangeError(`vocabSize must be a positive integer (got ${vocabSize})`)
  const table = new Int32Array(domains.length * vocabSize)
  domains.forEach((n, d) => {
    if (!Number.isInteger(n) || n <= 0) throw new RangeError(`domain ${d} must have a positive number of experts (got ${n})`)
    const rng = new Rng(deriveSeed(seed, 0x52_52_45, d))
    const row = table.subarray(d * vocabSize, (d + 1) * vocabSize)
    for (let v = 0; v < vocabSize; v++) row[v] = rng.below(n)
  })
  return table
}
