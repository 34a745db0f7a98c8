// loadModel: a validated manifest plus weights.bin memory-mapped once per process (ECSS: the store
// is the experts' only home in host memory). Every accessor returns a zero-copy view of the mapping.
import { join, resolve } from 'node:path'
import { HetmoeError } from '../runtime/errors.js'
import { native } from '../runtime/native.js'
import { decompress, type PackedMatrix } from './formats.js'
import { WEIGHTS_FILE, type BlobRef, type ExpertRef, type LayerRef, type MatrixRef, type ModelManifest } from './manifest.js'
import { readManifest } from './store-reader.js'

export type MatrixName = 'gate' | 'up' | 'down'

export interface LoadModelOptions {
  /** Pre-fault every page of weights.bin at load (MAP_POPULATE). Defaults to false (pages load on first touch). */
  populate?: boolean
}

/**
 * What another thread needs to open the same model without re-reading it: structured-cloneable
 * (postMessage / workerData). attachModel() maps `weightsPath` again, which in the same process
 * returns the same mapping (same weightsId, reference counted): no copy of the weights.
 */
export interface ModelHandle {
  dir: string
  weightsPath: string
  manifest: ModelManifest
}

export class Model implements Disposable {
  readonly dir: string
  readonly manifest: ModelManifest
  /** Absolute path of weights.bin: workers map this same path to share the mapping (same id, no copy). */
  readonly weightsPath: string
  readonly #id: number
  readonly #bytes: number
  #closed = false

  private constructor(dir: string, manifest: ModelManifest, weightsPath: string, id: number, bytes: number) {
    this.dir = dir
    this.manifest = manifest
    this.weightsPath = weightsPath
    this.#id = id
    this.#bytes = bytes
  }

  /** @internal use loadModel(). */
  static async open(dir: string, options: LoadModelOptions = {}): Promise<Model> {
    const root = resolve(dir)
    return Model.#map(root, readManifest(root), join(root, WEIGHTS_FILE), options)
  }

  /** @internal use attachModel(). */
  static async attach(handle: ModelHandle): Promise<Model> {
    return Model.#map(handle.dir, handle.manifest, handle.weightsPath, {})
  }

  static #map(root: string, manifest: ModelManifest, weightsPath: string, options: LoadModelOptions): Model {
    let mapped: { id: number; bytes: number }
    try {
      mapped = native().mapWeights(weightsPath, options.populate ?? false)
    } catch (err) {
      if (err instanceof HetmoeError) throw err
      throw new HetmoeError('BAD_MODEL', `${weightsPath}: cannot map the weights (${(err as Error).message})`, { cause: err })
    }
    if (mapped.bytes !== manifest.weightsBytes) {
      native().unmapWeights(mapped.id)
      throw new HetmoeError('BAD_MODEL', `${weightsPath}: ${mapped.bytes} bytes, the manifest says ${manifest.weightsBytes} (changed while loading?)`)
    }
    return new Model(root, manifest, weightsPath, mapped.id, mapped.bytes)
  }

  /** A cloneable description for worker threads (see attachModel). */
  handle(): ModelHandle {
    return { dir: this.dir, weightsPath: this.weightsPath, manifest: this.manifest }
  }

  /** The id of the process-wide mapping (native kernels take it with offsets). */
  get weightsId(): number {
    this.#check()
    return this.#id
  }

  /** Bytes of weights.bin. */
  get bytes(): number {
    return this.#bytes
  }

  get layers(): LayerRef[] {
    return this.manifest.layers
  }

  /** Layer by position in the manifest (0-based; `LayerRef.index` is the source model's layer number). */
  layer(layer: number): LayerRef {
    const l = this.manifest.layers[layer]
    if (!l) throw new HetmoeError('BAD_INPUT', `layer ${layer} does not exist (the model has ${this.manifest.layers.length})`)
    return l
  }

  expert(layer: number, expert: number): ExpertRef {
    const l = this.layer(layer)
    const e = l.experts[expert]
    if (!e) throw new HetmoeError('BAD_INPUT', `expert ${expert} does not exist in layer ${layer} (it has ${l.experts.length})`)
    return e
  }

  matrix(layer: number, expert: number, which: MatrixName): MatrixRef {
    const m = this.expert(layer, expert)[which]
    if (!m) throw new HetmoeError('BAD_INPUT', `layer ${layer} expert ${expert} has no ${which} matrix (${this.manifest.ffn} experts)`)
    return m
  }

  /** Zero-copy bytes of one blob (aligned to 4096, so any typed array over it is aligned). */
  view(blob: BlobRef): ArrayBuffer {
    this.#check()
    return native().weightsView(this.#id, blob.offset, blob.bytes)
  }

  /** int32 [numDomains × vocabSize] of an RRE layer. */
  rreTable(layer: number): Int32Array {
    const r = this.layer(layer).routing
    if (r.kind !== 'rre') throw new HetmoeError('BAD_INPUT', `layer ${layer} is routed by a learned gate, not RRE`)
    return new Int32Array(this.view(r.table))
  }

  /** fp32 [numExperts × D] of a gated layer. */
  gateWeight(layer: number): Float32Array {
    const r = this.layer(layer).routing
    if (r.kind !== 'gate') throw new HetmoeError('BAD_INPUT', `layer ${layer} is RRE-routed; it has no gate weight`)
    return new Float32Array(this.view(r.weight))
  }

  /** The stored parts of a matrix as typed views (no copy). */
  packed(ref: MatrixRef): PackedMatrix {
    const values = ref.dtype === 'bf16' ? new Uint16Array(this.view(ref.values)) : new Float32Array(this.view(ref.values))
    return {
      rows: ref.rows,
      cols: ref.cols,
      format: ref.format,
      dtype: ref.dtype,
      values,
      ...(ref.meta ? { meta: new Uint32Array(this.view(ref.meta)) } : {}),
      ...(ref.select ? { select: new Uint8Array(this.view(ref.select)) } : {}),
    }
  }

  /** The matrix decoded to dense fp32 [rows × cols] (a new array; for references and tests). */
  denseMatrix(ref: MatrixRef): Float32Array {
    return decompress(this.packed(ref))
  }

  /** Drops this model's reference to the mapping; views taken earlier must not be used afterwards. */
  close(): void {
    if (this.#closed) return
    this.#closed = true
    native().unmapWeights(this.#id)
  }

  [Symbol.dispose](): void {
    this.close()
  }

  #check(): void {
    if (this.#closed) throw new HetmoeError('BAD_INPUT', `the model at ${this.dir} is closed`)
  }
}

/** Reads and validates `<dir>/manifest.msgpack` and maps `<dir>/weights.bin` once per process. */
export function loadModel(dir: string, options?: LoadModelOptions): Promise<Model> {
  return Model.open(dir, options)
}

/**
 * Opens a model in another thread from `model.handle()`: the manifest is taken as already validated
 * and weights.bin is mapped by path, which returns the process's existing mapping (same weightsId).
 * Close it in that thread when done; the mapping goes when the last handle is closed.
 */
export function attachModel(handle: ModelHandle): Promise<Model> {
  return Model.attach(handle)
}
