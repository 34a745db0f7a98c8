// Load profiles: how many routed rows each expert of each layer receives over a stream of tokens.
// For RRE models that follows exactly from a token-id histogram — no model run needed. For gated
// models a LoadTracker records the gate's counts during real runs.
import { HetmoeError } from '../runtime/errors.js'
import { readDocument } from './document.js'
import type { ModelFile } from './model-file.js'
import { RreRouter } from './route-rre.js'

export interface LoadProfile {
  format: 'hetmoe-profile'
  version: 1
  /** The model's name. */
  model: string
  /** Tokens the counts were collected over. */
  tokens: number
  /** Routed rows per token: 1 for RRE, top-k for gates. */
  topK: number
  /** What the counts come from (a token file and domain, or recorded runs). */
  source: string
  /** counts[e]: routed rows expert e received (fractional when domains were mixed). */
  layers: { layer: number; counts: number[] }[]
}

/** The RRE routers of every layer of a model (BAD_MODEL if any layer is gated). */
export function rreRouters(model: ModelFile): RreRouter[] {
  const m = model.manifest
  return m.layers.map((l, i) => {
    if (l.routing.kind !== 'rre')
      throw new HetmoeError('BAD_INPUT', `${m.name} routes layer ${i} with a learned gate: token ids alone do not determine its routes. Record a profile with LoadTracker during runs and pass it with --profile`)
    return new RreRouter(l.routing, model.rreTable(i), m.vocabSize, l.experts.length)
  })
}

/**
 * The exact profile of an RRE model for a token stream. `domain` (name or index) says which group the
 * requests use; when left out the stream is assumed spread evenly over all domains.
 */
export function profileFromTokens(model: ModelFile, tokens: Int32Array, domain?: string | number, source = 'token histogram'): LoadProfile {
  const routers = rreRouters(model)
  const V = model.manifest.vocabSize
  const hist = new Float64Array(V)
  for (let i = 0; i < tokens.length; i++) {
    const t = tokens[i]
    if (t >>> 0 >= V) throw new HetmoeError('BAD_INPUT', `token ${i} is ${t}, outside the vocabulary [0, ${V})`)
    hist[t]++
  }
  const layers = routers.map((r, layer) => {
    const counts = new Float64Array(r.numExperts)
    const ds = domain === undefined ? r.domains.map((_, d) => d) : [r.domainIndex(domain)]
    const w = 1 / ds.length
    for (const d of ds) for (let t = 0; t < V; t++) if (hist[t] > 0) counts[r.expertOf(t, d)] += w * hist[t]
    return { layer, counts: Array.from(counts) }
  })
  const domainText = domain === undefined ? 'all domains evenly' : `domain ${JSON.stringify(routers[0]?.domains[routers[0].domainIndex(domain)]?.name ?? domain)}`
  return { format: 'hetmoe-profile', version: 1, model: model.manifest.name, tokens: tokens.length, topK: 1, source: `${source}, ${domainText}`, layers }
}

/** Per layer, the probability that a token is routed to each expert (counts / tokens). */
export function profileShares(p: LoadProfile): Float64Array[] {
  return p.layers.map((l) => Float64Array.from(l.counts, (c) => c / p.tokens))
}

/** Records gate counts during runs (feed it each layer's selection.counts) and turns them into a profile. */
export class LoadTracker {
  readonly #counts: Float64Array[]
  readonly #tokens: Float64Array
  readonly model: string
  readonly topK: number

  constructor(model: string, expertsPerLayer: readonly number[], topK: number) {
    this.model = model
    this.topK = topK
    this.#counts = expertsPerLayer.map((n) => new Float64Array(n))
    this.#tokens = new Float64Array(expertsPerLayer.length)
  }

  /** Adds one routed batch of `tokens` tokens: counts[e] rows went to expert e. Allocation-free. */
  record(layer: number, counts: ArrayLike<number>, tokens: number): void {
    const c = this.#counts[layer]
    if (!c) throw new HetmoeError('BAD_INPUT', `layer ${layer} does not exist (tracking ${this.#counts.length})`)
    for (let e = 0; e < c.length; e++) c[e] += counts[e]
    this.#tokens[layer] += tokens
  }

  profile(source = 'recorded gate counts'): LoadProfile {
    const tokens = Math.max(...this.#tokens)
    if (!(tokens > 0)) throw new HetmoeError('BAD_INPUT', 'no batches were recorded yet')
    // Layers may have seen different numbers of tokens (e.g. tracking started mid-forward): scale to one count.
    return {
      format: 'hetmoe-profile', version: 1, model: this.model, tokens, topK: this.topK, source,
      layers: this.#counts.map((c, layer) => ({ layer, counts: Array.from(c, (x) => (this.#tokens[layer] > 0 ? (x * tokens) / this.#tokens[layer] : 0)) })),
    }
  }

  reset(): void {
    for (const c of this.#counts) c.fill(0)
    this.#tokens.fill(0)
  }
}

export function readProfile(path: string, model?: { name: string; layers: { experts: unknown[] }[] }): LoadProfile {
  const p = readDocument(path, 'profile') as LoadProfile
  if (p?.format !== 'hetmoe-profile' || p.version !== 1 || !Array.isArray(p.layers) || !(p.tokens > 0))
    throw new HetmoeError('BAD_INPUT', `${path} is not a hetmoe profile (make one with \`hetmoe profile\` or LoadTracker)`)
  if (model) {
    if (p.layers.length !== model.layers.length)
      throw new HetmoeError('BAD_INPUT', `profile ${path} has ${p.layers.length} layers; model ${model.name} has ${model.layers.length}`)
    p.layers.forEach((l, i) => {
      if (l.counts.length !== model.layers[i].experts.length)
        throw new HetmoeError('BAD_INPUT', `profile ${path}, layer ${i}: ${l.counts.length} experts; the model has ${model.layers[i].experts.length}`)
    })
  }
  return p
}
