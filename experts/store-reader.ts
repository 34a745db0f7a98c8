// Reads and validates a model store's manifest. A manifest is trusted by the kernels (they index
// weights.bin with its offsets), so every field is checked here: types, version, every blob inside
// weights.bin and aligned, sizes consistent with shape × format × dtype, routing consistent with the
// experts. Errors are HetmoeError('BAD_MODEL') naming the file and the field.
import { closeSync, openSync, readFileSync, readSync, statSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { unpack } from 'msgpackr'
import { HetmoeError } from '../runtime/errors.js'
import { packedBytes } from './formats.js'
import {
  BLOB_ALIGN,
  MANIFEST_FILE,
  MANIFEST_VERSION,
  WEIGHTS_FILE,
  type BlobRef,
  type ExpertRef,
  type LayerRef,
  type MatrixRef,
  type ModelManifest,
} from './manifest.js'

/** Manifests larger than this are refused before parsing (a real one is a few hundred KB). */
const MAX_MANIFEST_BYTES = 256 * 2 ** 20

class Checker {
  readonly blobs: { ref: BlobRef; field: string }[] = []
  constructor(readonly file: string, readonly weightsBytes: number) {}

  fail(field: string, message: string): never {
    throw new HetmoeError('BAD_MODEL', `${this.file}: ${field}: ${message}`)
  }

  object(v: unknown, field: string): Record<string, unknown> {
    if (typeof v !== 'object' || v === null || Array.isArray(v) || v instanceof Uint8Array) this.fail(field, `expected an object, got ${describe(v)}`)
    return v as Record<string, unknown>
  }

  array(v: unknown, field: string, minLength = 0): unknown[] {
    if (!Array.isArray(v)) this.fail(field, `expected an array, got ${describe(v)}`)
    if (v.length < minLength) this.fail(field, `expected at least ${minLength} entries, got ${v.length}`)
    return v
  }

  int(v: unknown, field: string, min = 0, max = Number.MAX_SAFE_INTEGER): number {
    if (typeof v !== 'number' || !Number.isSafeInteger(v)) this.fail(field, `expected an integer, got ${describe(v)}`)
    if (v < min || v > max) this.fail(field, `${v} is outside [${min}, ${max}]`)
    return v
  }

  string(v: unknown, field: string): string {
    if (typeof v !== 'string') this.fail(field, `expected a string, got ${describe(v)}`)
    return v
  }

  oneOf<T extends string>(v: unknown, field: string, allowed: readonly T[]): T {
    if (typeof v !== 'string' || !allowed.includes(v as T)) this.fail(field, `expected one of ${allowed.join(', ')}, got ${describe(v)}`)
    return v as T
  }

  blob(v: unknown, field: string, expectedBytes: number): BlobRef {
    const o = this.object(v, field)
    const offset = this.int(o.offset, `${field}.offset`)
    const bytes = this.int(o.bytes, `${field}.bytes`)
    if (offset % BLOB_ALIGN !== 0) this.fail(`${field}.offset`, `${offset} is not a multiple of ${BLOB_ALIGN}`)
    if (bytes !== expectedBytes) this.fail(`${field}.bytes`, `${bytes} does not match the ${expectedBytes} bytes its shape, format and dtype need`)
    if (offset + bytes > this.weightsBytes) this.fail(field, `[${offset}, ${offset + bytes}) runs past the end of ${WEIGHTS_FILE} (${this.weightsBytes} bytes)`)
    const ref = { offset, bytes }
    this.blobs.push({ ref, field })
    return ref
  }

  matrix(v: unknown, field: string, rows: number, cols: number | undefined): MatrixRef {
    const o = this.object(v, field)
    const r = this.int(o.rows, `${field}.rows`, 1, 2 ** 31 - 1)
    const c = this.int(o.cols, `${field}.cols`, 1, 2 ** 31 - 1)
    if (r !== rows) this.fail(`${field}.rows`, `${r} rows, expected ${rows}`)
    if (cols !== undefined && c !== cols) this.fail(`${field}.cols`, `${c} cols, expected ${cols}`)
    if (r * c > 2 ** 40) this.fail(field, `${r}×${c} is implausibly large`)
    const format = this.oneOf(o.format, `${field}.format`, ['dense', '2:4', '75%'] as const)
    const dtype = this.oneOf(o.dtype, `${field}.dtype`, ['bf16', 'fp32'] as const)
    if (format !== 'dense' && c % 16 !== 0) this.fail(`${field}.cols`, `${format} needs cols % 16 == 0, got ${c}`)
    if (format === '75%' && r % 2 !== 0) this.fail(`${field}.rows`, `75% needs an even number of rows, got ${r}`)
    const sizes = packedBytes(r, c, format, dtype)
    const ref: MatrixRef = { rows: r, cols: c, format, dtype, values: this.blob(o.values, `${field}.values`, sizes.values) }
    if (format !== 'dense') ref.meta = this.blob(o.meta, `${field}.meta`, sizes.meta)
    else if (o.meta !== undefined) this.fail(`${field}.meta`, 'a dense matrix has no metadata')
    if (format === '75%') ref.select = this.blob(o.select, `${field}.select`, sizes.select)
    else if (o.select !== undefined) this.fail(`${field}.select`, `only 75% matrices have a row selection`)
    if (o.pruneError !== undefined) {
      if (typeof o.pruneError !== 'number' || !(o.pruneError >= 0) || !Number.isFinite(o.pruneError)) this.fail(`${field}.pruneError`, `expected a finite number >= 0, got ${describe(o.pruneError)}`)
      ref.pruneError = o.pruneError
    }
    return ref
  }

  /** `ffn` undefined: a shared expert, whose inner size is its own (read from `up`). */
  expert(v: unknown, field: string, ffn: 'swiglu' | 'gelu', hidden: number, inner: number | undefined): ExpertRef {
    const o = this.object(v, field)
    const up0 = this.object(o.up, `${field}.up`)
    const f = inner ?? this.int(up0.rows, `${field}.up.rows`, 1, 2 ** 31 - 1)
    const e: ExpertRef = { up: this.matrix(o.up, `${field}.up`, f, hidden), down: this.matrix(o.down, `${field}.down`, hidden, f) }
    if (ffn === 'swiglu') e.gate = this.matrix(o.gate, `${field}.gate`, f, hidden)
    else if (o.gate !== undefined) this.fail(`${field}.gate`, 'a GeLU expert has no gate matrix')
    return e
  }

  checkOverlaps(): void {
    const sorted = this.blobs.filter((b) => b.ref.bytes > 0).sort((a, b) => a.ref.offset - b.ref.offset)
    for (let i = 1; i < sorted.length; i++) {
      const prev = sorted[i - 1]
      if (sorted[i].ref.offset < prev.ref.offset + prev.ref.bytes) this.fail(sorted[i].field, `overlaps ${prev.field}`)
    }
  }
}

function describe(v: unknown): string {
  if (v === undefined) return 'nothing'
  if (v === null) return 'null'
  if (Array.isArray(v)) return 'an array'
  if (typeof v === 'string') return JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}…` : v)
  if (typeof v === 'object') return 'an object'
  return `${typeof v} ${String(v)}`
}

/**
 * Validates a decoded manifest against the size of weights.bin; returns it typed (a fresh object
 * holding only the known fields). `file` names the manifest in errors.
 */
export function validateManifest(raw: unknown, weightsFileBytes: number, file = MANIFEST_FILE): ModelManifest {
  const ck = new Checker(file, weightsFileBytes)
  const m = ck.object(raw, 'manifest')
  if (m.format !== 'hetmoe-model') ck.fail('format', `expected "hetmoe-model", got ${describe(m.format)} (not a hetmoe model?)`)
  if (m.version !== MANIFEST_VERSION) ck.fail('version', `this hetmoe reads manifest version ${MANIFEST_VERSION}, got ${describe(m.version)}; re-create the model with this version`)
  const weightsBytes = ck.int(m.weightsBytes, 'weightsBytes')
  if (weightsBytes !== weightsFileBytes) ck.fail('weightsBytes', `${weightsBytes}, but ${WEIGHTS_FILE} has ${weightsFileBytes} bytes (truncated or replaced?)`)
  const hiddenSize = ck.int(m.hiddenSize, 'hiddenSize', 1, 2 ** 20)
  const ffnSize = ck.int(m.ffnSize, 'ffnSize', 1, 2 ** 24)
  const ffn = ck.oneOf(m.ffn, 'ffn', ['swiglu', 'gelu'] as const)
  const dtype = ck.oneOf(m.dtype, 'dtype', ['bf16', 'fp32'] as const)
  const vocabSize = ck.int(m.vocabSize, 'vocabSize', 0, 2 ** 24)
  const provenance = ck.object(m.provenance ?? {}, 'provenance') as Record<string, string | number>
  const layersRaw = ck.array(m.layers, 'layers', 1)
  const seen = new Set<number>()
  const layers: LayerRef[] = layersRaw.map((lv, li) => {
    const lf = `layers[${li}]`
    const l = ck.object(lv, lf)
    const index = ck.int(l.index, `${lf}.index`, 0, 2 ** 20)
    if (seen.has(index)) ck.fail(`${lf}.index`, `layer index ${index} appears twice`)
    seen.add(index)
    const experts = ck.array(l.experts, `${lf}.experts`, 1).map((e, ei) => ck.expert(e, `${lf}.experts[${ei}]`, ffn, hiddenSize, ffnSize))
    const sharedExperts = ck.array(l.sharedExperts ?? [], `${lf}.sharedExperts`).map((e, ei) => ck.expert(e, `${lf}.sharedExperts[${ei}]`, ffn, hiddenSize, undefined))
    const E = experts.length
    const r = ck.object(l.routing, `${lf}.routing`)
    const kind = ck.oneOf(r.kind, `${lf}.routing.kind`, ['rre', 'gate'] as const)
    let routing: LayerRef['routing']
    if (kind === 'rre') {
      if (vocabSize < 1) ck.fail('vocabSize', 'an RRE model needs a vocabulary size of at least 1')
      if (typeof r.seed !== 'number' || !Number.isFinite(r.seed)) ck.fail(`${lf}.routing.seed`, `expected a number, got ${describe(r.seed)}`)
      let next = 0
      const names = new Set<string>()
      const domains = ck.array(r.domains, `${lf}.routing.domains`, 1).map((dv, di) => {
        const df = `${lf}.routing.domains[${di}]`
        const d = ck.object(dv, df)
        const name = ck.string(d.name, `${df}.name`)
        if (names.has(name)) ck.fail(`${df}.name`, `domain "${name}" appears twice`)
        names.add(name)
        const firstExpert = ck.int(d.firstExpert, `${df}.firstExpert`, 0, E)
        const numExperts = ck.int(d.numExperts, `${df}.numExperts`, 1, E)
        if (firstExpert !== next) ck.fail(`${df}.firstExpert`, `${firstExpert}, expected ${next}: domain groups must cover the experts in order without gaps or overlaps`)
        next = firstExpert + numExperts
        return { name, firstExpert, numExperts }
      })
      if (next !== E) ck.fail(`${lf}.routing.domains`, `the domain groups cover ${next} experts, the layer has ${E}`)
      const table = ck.blob(r.table, `${lf}.routing.table`, domains.length * vocabSize * 4)
      routing = { kind: 'rre', seed: r.seed as number, domains, table }
    } else {
      const topK = ck.int(r.topK, `${lf}.routing.topK`, 1, E)
      if (typeof r.normalize !== 'boolean') ck.fail(`${lf}.routing.normalize`, `expected a boolean, got ${describe(r.normalize)}`)
      const weight = ck.blob(r.weight, `${lf}.routing.weight`, E * hiddenSize * 4)
      routing = { kind: 'gate', topK, normalize: r.normalize as boolean, weight }
    }
    const layer: LayerRef = { index, experts, sharedExperts, routing }
    if (l.sharedExpertGate !== undefined) {
      if (sharedExperts.length === 0) ck.fail(`${lf}.sharedExpertGate`, 'a shared-expert gate without shared experts')
      layer.sharedExpertGate = ck.blob(l.sharedExpertGate, `${lf}.sharedExpertGate`, hiddenSize * 4)
    }
    return layer
  })
  ck.checkOverlaps()
  return {
    format: 'hetmoe-model',
    version: MANIFEST_VERSION,
    name: ck.string(m.name, 'name'),
    origin: ck.string(m.origin, 'origin'),
    hiddenSize,
    ffnSize,
    ffn,
    dtype,
    vocabSize,
    layers,
    weightsBytes,
    provenance,
  }
}

/** Decodes manifest bytes (msgpack) into an unvalidated value; errors name the file. */
export function decodeManifest(bytes: Uint8Array, file: string): unknown {
  try {
    return unpack(bytes)
  } catch (err) {
    throw new HetmoeError('BAD_MODEL', `${file}: not a valid msgpack manifest (${(err as Error).message})`, { cause: err })
  }
}

/** Reads `<dir>/manifest.msgpack`, checks it against `<dir>/weights.bin`, and checks the RRE tables' values. */
export function readManifest(dir: string): ModelManifest {
  const root = resolve(dir)
  const file = join(root, MANIFEST_FILE)
  const weights = join(root, WEIGHTS_FILE)
  let manifestSize: number
  let weightsSize: number
  try {
    manifestSize = statSync(file).size
  } catch (err) {
    throw new HetmoeError('BAD_MODEL', `${file}: cannot read the manifest (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}); is ${root} a hetmoe model directory?`, { cause: err })
  }
  if (manifestSize > MAX_MANIFEST_BYTES) throw new HetmoeError('BAD_MODEL', `${file}: ${manifestSize} bytes is too large for a manifest`)
  try {
    weightsSize = statSync(weights).size
  } catch (err) {
    throw new HetmoeError('BAD_MODEL', `${weights}: cannot read the weights (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`, { cause: err })
  }
  const manifest = validateManifest(decodeManifest(readFileSync(file), file), weightsSize, file)
  checkRreTables(manifest, weights, file)
  return manifest
}

/** Every RRE table entry must name an expert of its group (the kernels index with it unchecked). */
function checkRreTables(m: ModelManifest, weights: string, file: string): void {
  const fd = openSync(weights, 'r')
  try {
    for (const [li, layer] of m.layers.entries()) {
      if (layer.routing.kind !== 'rre') continue
      const { table, domains } = layer.routing
      const buf = new Int32Array(table.bytes / 4)
      readSync(fd, new Uint8Array(buf.buffer), 0, table.bytes, table.offset)
      for (const [d, g] of domains.entries()) {
        const row = buf.subarray(d * m.vocabSize, (d + 1) * m.vocabSize)
        for (let v = 0; v < row.length; v++) {
          if (row[v] < 0 || row[v] >= g.numExperts) {
            throw new HetmoeError('BAD_MODEL', `${file}: layers[${li}].routing.table: domain ${d} maps token ${v} to expert ${row[v]}, outside [0, ${g.numExperts})`)
          }
        }
      }
    }
  } finally {
    closeSync(fd)
  }
}
