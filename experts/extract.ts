// `hetmoe extract`: a sub-model holding one domain of an RRE model — for every RRE layer, that
// domain's expert group (renumbered from 0, the only domain, index 0) and its routing-table row. Blobs
// are copied byte for byte, so the sub-model computes bit-identical expert outputs for that domain.
// Gate-routed layers have no domains and are copied whole.
import { closeSync, openSync, readSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { HetmoeError } from '../runtime/errors.js'
import { version } from '../runtime/version.js'
import { WEIGHTS_FILE, type BlobRef, type ExpertRef, type LayerRef, type MatrixRef, type ModelManifest } from './manifest.js'
import { readManifest } from './store-reader.js'
import { IO_CHUNK, writeStore, type StoreWriter } from './store-writer.js'

export interface ExtractOptions {
  /** Domain name, or index in the first RRE layer's domain list. */
  domain: string | number
  out: string
  overwrite?: boolean
  onProgress?: (done: number, total: number) => void
}

/** Resolves a domain name or index against a manifest (all RRE layers must agree). */
export function domainIndex(m: ModelManifest, domain: string | number): number {
  const rre = m.layers.filter((l) => l.routing.kind === 'rre')
  if (rre.length === 0) throw new HetmoeError('UNSUPPORTED', `model "${m.name}" has no RRE layer, so no domains to extract`)
  const names = (rre[0].routing as { domains: { name: string }[] }).domains.map((d) => d.name)
  for (const l of rre) {
    const other = (l.routing as { domains: { name: string }[] }).domains.map((d) => d.name)
    if (other.join('\0') !== names.join('\0')) throw new HetmoeError('UNSUPPORTED', `model "${m.name}": layer ${l.index} has different domains (${other.join(', ')}) than layer ${rre[0].index} (${names.join(', ')})`)
  }
  const asNumber = typeof domain === 'number' ? domain : /^\d+$/.test(domain) && !names.includes(domain) ? Number(domain) : undefined
  const d = asNumber ?? names.indexOf(domain as string)
  if (!(d >= 0 && d < names.length)) throw new HetmoeError('BAD_OPTION', `unknown domain ${JSON.stringify(domain)}; the model has ${names.map((n, i) => `${i}: ${n}`).join(', ')}`)
  return d
}

export async function extractDomain(modelDir: string, options: ExtractOptions): Promise<ModelManifest> {
  const root = resolve(modelDir)
  const src = readManifest(root)
  const d = domainIndex(src, options.domain)
  const fd = openSync(join(root, WEIGHTS_FILE), 'r')
  try {
    const kept = src.layers.map((l) => (l.routing.kind === 'rre' ? l.routing.domains[d].numExperts : l.experts.length))
    const total = kept.reduce((a, b) => a + b, 0)
    let done = 0
    let buf = new Uint8Array(1 << 20)
    const copy = (w: StoreWriter, b: BlobRef): BlobRef => {
      if (buf.length < b.bytes) buf = new Uint8Array(b.bytes)
      const view = buf.subarray(0, b.bytes)
      let n = 0
      while (n < b.bytes) {
        const r = readSync(fd, view, n, Math.min(b.bytes - n, IO_CHUNK), b.offset + n)
        if (r === 0) throw new HetmoeError('BAD_MODEL', `${join(root, WEIGHTS_FILE)}: ended while reading [${b.offset}, +${b.bytes})`)
        n += r
      }
      return w.addBlob(view)
    }
    const copyMatrix = (w: StoreWriter, m: MatrixRef): MatrixRef => ({
      ...m,
      values: copy(w, m.values),
      ...(m.meta ? { meta: copy(w, m.meta) } : {}),
      ...(m.select ? { select: copy(w, m.select) } : {}),
    })
    const copyExpert = (w: StoreWriter, e: ExpertRef): ExpertRef => ({
      ...(e.gate ? { gate: copyMatrix(w, e.gate) } : {}),
      up: copyMatrix(w, e.up),
      down: copyMatrix(w, e.down),
    })
    return await writeStore(options.out, { overwrite: options.overwrite }, async (w) => {
      const layers: LayerRef[] = []
      for (const l of src.layers) {
        let routing: LayerRef['routing']
        let experts: ExpertRef[]
        if (l.routing.kind === 'rre') {
          const g = l.routing.domains[d]
          const row: BlobRef = { offset: l.routing.table.offset + d * src.vocabSize * 4, bytes: src.vocabSize * 4 }
          routing = { kind: 'rre', seed: l.routing.seed, domains: [{ name: g.name, firstExpert: 0, numExperts: g.numExperts }], table: copy(w, row) }
          experts = l.experts.slice(g.firstExpert, g.firstExpert + g.numExperts)
        } else {
          routing = { ...l.routing, weight: copy(w, l.routing.weight) }
          experts = l.experts
        }
        const out: ExpertRef[] = []
        for (const e of experts) {
          out.push(copyExpert(w, e))
          options.onProgress?.(++done, total)
        }
        const layer: LayerRef = { index: l.index, experts: out, sharedExperts: l.sharedExperts.map((e) => copyExpert(w, e)), routing }
        if (l.sharedExpertGate) layer.sharedExpertGate = copy(w, l.sharedExpertGate)
        layers.push(layer)
        await new Promise((r) => setImmediate(r))
      }
      const name = (src.layers.find((l) => l.routing.kind === 'rre')!.routing as { domains: { name: string }[] }).domains[d].name
      return {
        name: `${src.name}.${name}`,
        origin: src.origin,
        hiddenSize: src.hiddenSize,
        ffnSize: src.ffnSize,
        ffn: src.ffn,
        dtype: src.dtype,
        vocabSize: src.vocabSize,
        layers,
        provenance: { ...src.provenance, tool: `hetmoe extract ${version}`, extractedFrom: root, domain: name, domainIndex: d },
      }
    })
  } finally {
    closeSync(fd)
  }
}
