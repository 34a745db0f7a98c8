// Random Routed Experts (PanGu-Σ) routing: the request's domain picks an expert group, a fixed table
// picks the expert: expert = domains[d].firstExpert + table[d·vocab + tokenId]. Top-1, weight 1.
// Nothing here depends on hidden states, so routes are known for every layer as soon as token ids
// are (see lookahead.ts), and the result is identical on every machine.
import type { DomainGroup, RreRouting } from '../experts/manifest.js'
import { HetmoeError } from '../runtime/errors.js'
import { checkSelection, countsToOffsets, type Selection } from './selection.js'

export class RreRouter {
  readonly numExperts: number
  readonly vocabSize: number
  readonly domains: readonly DomainGroup[]
  readonly #table: Int32Array
  readonly #byName = new Map<string, number>()
  /** Scratch write cursors, one per expert: keeps route() free of allocation. */
  readonly #cursor: Int32Array

  /** `table` is the layer's int32 [domains × vocabSize] table (from weights.bin or makeRreTable). */
  constructor(routing: Pick<RreRouting, 'domains'>, table: Int32Array, vocabSize: number, numExperts: number) {
    this.domains = routing.domains
    this.vocabSize = vocabSize
    this.numExperts = numExperts
    if (table.length !== routing.domains.length * vocabSize)
      throw new HetmoeError('BAD_MODEL', `RRE table has ${table.length} entries; ${routing.domains.length} domains × vocabulary ${vocabSize} need ${routing.domains.length * vocabSize}`)
    routing.domains.forEach((d, i) => {
      if (d.firstExpert < 0 || d.numExperts <= 0 || d.firstExpert + d.numExperts > numExperts)
        throw new HetmoeError('BAD_MODEL', `RRE domain "${d.name}" covers experts [${d.firstExpert}, ${d.firstExpert + d.numExperts}) of a layer with ${numExperts}`)
      this.#byName.set(d.name, i)
      for (let t = i * vocabSize, end = t + vocabSize; t < end; t++)
        if (table[t] >>> 0 >= d.numExperts)
          throw new HetmoeError('BAD_MODEL', `RRE table entry for domain "${d.name}", token ${t - i * vocabSize} is ${table[t]}, outside [0, ${d.numExperts})`)
    })
    this.#table = table
    this.#cursor = new Int32Array(numExperts)
  }

  /** The index of a domain given by name or index; BAD_INPUT naming it when unknown. */
  domainIndex(domain: string | number): number {
    const d = typeof domain === 'number' ? domain : this.#byName.get(domain)
    if (d === undefined || !Number.isInteger(d) || d < 0 || d >= this.domains.length)
      throw new HetmoeError(
        'BAD_INPUT',
        `unknown domain ${JSON.stringify(domain)}: this model's domains are ${this.domains.map((g, i) => `${i} "${g.name}"`).join(', ')}`,
      )
    return d
  }

  /** Throws BAD_INPUT naming the first token id outside [0, vocabSize). */
  checkTokens(tokenIds: Int32Array, count = tokenIds.length): void {
    if (!Number.isInteger(count) || count < 0 || count > tokenIds.length)
      throw new HetmoeError('BAD_INPUT', `token count ${count} must be an integer in [0, ${tokenIds.length}] (the ids given)`)
    const v = this.vocabSize
    for (let t = 0; t < count; t++)
      if (tokenIds[t] >>> 0 >= v)
        throw new HetmoeError('BAD_INPUT', `token ${t} has id ${tokenIds[t]}, outside the vocabulary [0, ${v})`)
  }

  /** The expert of one token (no validation). */
  expertOf(tokenId: number, domainIndex: number): number {
    return this.domains[domainIndex].firstExpert + this.#table[domainIndex * this.vocabSize + tokenId]
  }

  /** Adds to counts[e] the number of these tokens routed to each expert e (for lookahead and profiles). */
  countInto(tokenIds: Int32Array, domain: string | number, counts: Int32Array | Float64Array, count = tokenIds.length): void {
    const d = this.domainIndex(domain)
    this.checkTokens(tokenIds, count)
    const first = this.domains[d].firstExpert
    const row = d * this.vocabSize
    const table = this.#table
    for (let t = 0; t < count; t++) counts[first + table[row + tokenIds[t]]]++
  }

  /**
   * Routes `count` tokens (default all of tokenIds) into `out`; returns the number of routed rows
   * (= count). Validates everything before writing anything; allocation-free.
   */
  route(tokenIds: Int32Array, domain: string | number, out: Selection, count = tokenIds.length): number {
    const d = this.domainIndex(domain)
    this.checkTokens(tokenIds, count)
    checkSelection(out, this.numExperts, count)
    const { counts, offsets, tokenRows, outRows, scales } = out
    const E = this.numExperts
    const first = this.domains[d].firstExpert
    const row = d * this.vocabSize
    const table = this.#table
    const cursor = this.#cursor
    counts.fill(0, 0, E)
    for (let t = 0; t < count; t++) counts[first + table[row + tokenIds[t]]]++
    countsToOffsets(counts, offsets, E)
    for (let e = 0; e < E; e++) cursor[e] = offsets[e]
    // Walking tokens in order keeps each expert's rows ascending (a counting sort), which the
    // kernels rely on for coalesced reads and which makes the selection deterministic.
    for (let t = 0; t < count; t++) {
      const i = cursor[first + table[row + tokenIds[t]]]++
      tokenRows[i] = t
      outRows[i] = t
      scales[i] = 1
    }
    return count
  }
}
