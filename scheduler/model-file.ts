// A small reader for what the scheduler needs from a model directory: the manifest and the routing
// blobs (RRE tables, gate weights) — never expert weights. experts/ owns the full loader
// (loadModel); this stays self-contained so the scheduler and its CLI commands work without it.
import { closeSync, existsSync, fstatSync, openSync, readFileSync, readSync } from 'node:fs'
import { join } from 'node:path'
import { unpack } from 'msgpackr'
import { MANIFEST_FILE, MANIFEST_VERSION, WEIGHTS_FILE, type BlobRef, type ModelManifest } from '../experts/manifest.js'
import { HetmoeError } from '../runtime/errors.js'

export interface ModelFile {
  dir: string
  manifest: ModelManifest
  /** Layer `layer`'s RRE table, int32 [domains × vocabSize]; BAD_MODEL when the layer is gated. */
  rreTable(layer: number): Int32Array
  /** Layer `layer`'s gate weight, fp32 [experts × hiddenSize]; BAD_MODEL when the layer is RRE. */
  gateWeight(layer: number): Float32Array
}

export function readModelFile(dir: string): ModelFile {
  const manifestPath = join(dir, MANIFEST_FILE)
  const weightsPath = join(dir, WEIGHTS_FILE)
  if (!existsSync(manifestPath))
    throw new HetmoeError('BAD_MODEL', `${dir} is not a hetmoe model: ${MANIFEST_FILE} is missing (make one with \`hetmoe synth\` or import a checkpoint)`)
  let manifest: ModelManifest
  try {
    manifest = unpack(readFileSync(manifestPath)) as ModelManifest
  } catch (err) {
    throw new HetmoeError('BAD_MODEL', `${manifestPath} is not valid msgpack: ${(err as Error).message}`, { cause: err })
  }
  if (manifest?.format !== 'hetmoe-model' || manifest.version !== MANIFEST_VERSION || !Array.isArray(manifest.layers))
    throw new HetmoeError('BAD_MODEL', `${manifestPath} is not a version-${MANIFEST_VERSION} hetmoe model manifest`)

  const read = (blob: BlobRef, what: string): ArrayBuffer => {
    if (!existsSync(weightsPath)) throw new HetmoeError('BAD_MODEL', `${dir}: ${WEIGHTS_FILE} is missing (needed for ${what})`)
    const fd = openSync(weightsPath, 'r')
    try {
      const size = fstatSync(fd).size
      if (blob.offset < 0 || blob.offset + blob.bytes > size)
        throw new HetmoeError('BAD_MODEL', `${what} at bytes [${blob.offset}, ${blob.offset + blob.bytes}) lies outside ${weightsPath} (${size} bytes)`)
      const buf = new ArrayBuffer(blob.bytes)
      readSync(fd, new Uint8Array(buf), 0, blob.bytes, blob.offset)
      return buf // little-endian on disk; hetmoe runs on little-endian hosts only (x86-64, arm64)
    } finally {
      closeSync(fd)
    }
  }
  const layerRef = (layer: number) => {
    const l = manifest.layers[layer]
    if (!l) throw new HetmoeError('BAD_INPUT', `layer ${layer} does not exist; ${manifest.name} has ${manifest.layers.length}`)
    return l
  }

  return {
    dir,
    manifest,
    rreTable(layer) {
      const r = layerRef(layer).routing
      if (r.kind !== 'rre') throw new HetmoeError('BAD_MODEL', `layer ${layer} of ${manifest.name} routes with a learned gate, not an RRE table`)
      const want = 4 * r.domains.length * manifest.vocabSize
      if (r.table.bytes !== want) throw new HetmoeError('BAD_MODEL', `layer ${layer}'s RRE table is ${r.table.bytes} bytes; ${r.domains.length} domains × vocabulary ${manifest.vocabSize} × 4 = ${want}`)
      return new Int32Array(read(r.table, `layer ${layer}'s RRE table`))
    },
    gateWeight(layer) {
      const r = layerRef(layer).routing
      if (r.kind !== 'gate') throw new HetmoeError('BAD_MODEL', `layer ${layer} of ${manifest.name} uses RRE routing, not a learned gate`)
      const want = 4 * layerRef(layer).experts.length * manifest.hiddenSize
      if (r.weight.bytes !== want) throw new HetmoeError('BAD_MODEL', `layer ${layer}'s gate weight is ${r.weight.bytes} bytes; expected ${want}`)
      return new Float32Array(read(r.weight, `layer ${layer}'s gate weight`))
    },
  }
}
