// Writes a model store: blobs stream into `weights.bin` as they are produced (a 17 GB model is never
// held in memory), each padded to BLOB_ALIGN; the manifest goes last. Everything is written into a
// temporary directory beside the target and renamed into place by `commit()`, so a failure at any
// point — a bad tensor, a full disk, Ctrl-C — leaves no partial model under the target's name.
import { closeSync, existsSync, fsyncSync, ftruncateSync, mkdirSync, openSync, renameSync, rmSync, write, writeFileSync, writeSync } from 'node:fs'
import { basename, dirname, join, resolve } from 'node:path'
import { pack } from 'msgpackr'
import { HetmoeError } from '../runtime/errors.js'
import type { PackedMatrix } from './formats.js'
import { validateManifest } from './store-reader.js'
import { BLOB_ALIGN, MANIFEST_FILE, MANIFEST_VERSION, WEIGHTS_FILE, type BlobRef, type MatrixRef, type ModelManifest } from './manifest.js'

/** The manifest without what the writer fills in itself. */
export type ManifestDraft = Omit<ModelManifest, 'format' | 'version' | 'weightsBytes'>

export interface StoreWriterOptions {
  /** Replace an existing model directory at the target. Defaults to false (then an existing target is an error). */
  overwrite?: boolean
}

/** Largest single read or write: Node refuses lengths of 2 GiB and more in one call. */
export const IO_CHUNK = 2 ** 30

const tempPrefix = (target: string) => `.${basename(target)}.partial-`

export class StoreWriter {
  readonly target: string
  readonly tempDir: string
  #fd: number
  #offset = 0
  #done = false
  readonly #pending = new Set<Promise<void>>()
  #writeError: unknown
  readonly #overwrite: boolean

  private constructor(target: string, tempDir: string, fd: number, overwrite: boolean) {
    this.target = target
    this.tempDir = tempDir
    this.#fd = fd
    this.#overwrite = overwrite
  }

  /** Opens a writer for `targetDir` (created by commit(); its parent must exist or is created). */
  static create(targetDir: string, options: StoreWriterOptions = {}): StoreWriter {
    const target = resolve(targetDir)
    if (existsSync(target) && !options.overwrite) {
      throw new HetmoeError('BAD_OPTION', `${target} already exists; choose another --out or remove it first (--force replaces it)`)
    }
    const parent = dirname(target)
    mkdirSync(parent, { recursive: true })
    const tempDir = join(parent, `${tempPrefix(target)}${process.pid}-${Math.random().toString(36).slice(2, 10)}`)
    mkdirSync(tempDir)
    try {
      const fd = openSync(join(tempDir, WEIGHTS_FILE), 'w')
      return new StoreWriter(target, tempDir, fd, options.overwrite ?? false)
    } catch (err) {
      rmSync(tempDir, { recursive: true, force: true })
      throw new HetmoeError('BAD_OPTION', `cannot write a model under ${parent}: ${(err as Error).message}`, { cause: err })
    }
  }

  /** Bytes written to weights.bin so far (always a multiple of BLOB_ALIGN between blobs). */
  get bytesWritten(): number {
    return this.#offset
  }

  /**
   * Appends one blob, 4096-aligned; returns where it lives. Blobs are written at their own offsets
   * (pwrite); the padding between them is left as a hole that reads as zeros, and commit() sets the
   * file's final length.
   */
  addBlob(data: ArrayBufferView): BlobRef {
    const { ref, bytes } = this.#reserve(data)
    let done = 0
    while (done < bytes.length) done += writeSync(this.#fd, bytes, done, Math.min(bytes.length - done, IO_CHUNK), ref.offset + done)
    return ref
  }

  /**
   * Like addBlob, but the write runs on libuv's thread pool while the caller computes the next blob
   * (synth overlaps generation with disk writes this way). `data` must not change until `written`
   * resolves; commit() waits for every pending write and fails if one did.
   */
  addBlobAsync(data: ArrayBufferView): { ref: BlobRef; written: Promise<void> } {
    const { ref, bytes } = this.#reserve(data)
    const written = new Promise<void>((resolve, reject) => {
      const step = (done: number) => {
        if (done >= bytes.length) return resolve()
        write(this.#fd, bytes, done, Math.min(bytes.length - done, IO_CHUNK), ref.offset + done, (err, n) => (err ? reject(err) : step(done + n)))
      }
      step(0)
    })
    const tracked = written.then(
      () => void this.#pending.delete(tracked),
      (err: unknown) => {
        this.#pending.delete(tracked)
        this.#writeError ??= err
      },
    )
    this.#pending.add(tracked)
    return { ref, written }
  }

  /** Waits for every addBlobAsync write; rethrows the first failure. */
  async flush(): Promise<void> {
    while (this.#pending.size) await Promise.all(this.#pending)
    if (this.#writeError) throw new HetmoeError('BAD_OPTION', `writing ${this.tempDir}/${WEIGHTS_FILE} failed: ${(this.#writeError as Error).message}`, { cause: this.#writeError })
  }

  #reserve(data: ArrayBufferView): { ref: BlobRef; bytes: Uint8Array } {
    this.#checkOpen()
    const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
    const offset = this.#offset
    this.#offset = offset + Math.ceil(bytes.length / BLOB_ALIGN) * BLOB_ALIGN
    return { ref: { offset, bytes: bytes.length }, bytes }
  }

  /** Appends a packed matrix (values, then meta, then select) and returns its manifest entry. */
  addMatrix(m: PackedMatrix, pruneError?: number): MatrixRef {
    const ref: MatrixRef = { rows: m.rows, cols: m.cols, format: m.format, dtype: m.dtype, values: this.addBlob(m.values) }
    if (m.meta) ref.meta = this.addBlob(m.meta)
    if (m.select) ref.select = this.addBlob(m.select)
    if (pruneError !== undefined) ref.pruneError = pruneError
    return ref
  }

  /**
   * Validates the manifest exactly as the reader will (a writer bug must not produce a model that
   * cannot be loaded), writes it, and renames the directory into place.
   */
  commit(draft: ManifestDraft): ModelManifest {
    this.#checkOpen()
    if (this.#pending.size || this.#writeError) throw new Error('StoreWriter.commit: await flush() first (writes are pending or failed)')
    const manifest: ModelManifest = { format: 'hetmoe-model', version: MANIFEST_VERSION, ...draft, weightsBytes: this.#offset }
    try {
      validateManifest(manifest, this.#offset, join(this.tempDir, MANIFEST_FILE))
      ftruncateSync(this.#fd, this.#offset)
      fsyncSync(this.#fd)
      closeSync(this.#fd)
      this.#fd = -1
      writeFileSync(join(this.tempDir, MANIFEST_FILE), pack(manifest))
      if (existsSync(this.target)) {
        if (!this.#overwrite) throw new HetmoeError('BAD_OPTION', `${this.target} appeared while the model was written; not replacing it`)
        const old = `${this.tempDir}.old`
        renameSync(this.target, old)
        renameSync(this.tempDir, this.target)
        rmSync(old, { recursive: true, force: true })
      } else {
        renameSync(this.tempDir, this.target)
      }
      this.#done = true
      return manifest
    } catch (err) {
      this.abort()
      if (err instanceof HetmoeError) throw err
      throw new HetmoeError('BAD_OPTION', `cannot finish the model at ${this.target}: ${(err as Error).message}`, { cause: err })
    }
  }

  /** Drops everything written (idempotent; a no-op after commit). Pending async writes fail harmlessly. */
  abort(): void {
    if (this.#done) return
    this.#done = true
    if (this.#fd >= 0) {
      try {
        closeSync(this.#fd)
      } catch {
        // already closed
      }
      this.#fd = -1
    }
    rmSync(this.tempDir, { recursive: true, force: true })
  }

  #checkOpen(): void {
    if (this.#done) throw new Error('StoreWriter: already committed or aborted')
  }
}

/**
 * Runs `build` with a writer and commits what it returns; any error (or a signal's abort) removes
 * the temporary directory before it propagates.
 */
export async function writeStore(targetDir: string, options: StoreWriterOptions, build: (w: StoreWriter) => Promise<ManifestDraft> | ManifestDraft): Promise<ModelManifest> {
  const w = StoreWriter.create(targetDir, options)
  const onSignal = () => {
    w.abort()
    process.exit(130)
  }
  process.once('SIGINT', onSignal)
  try {
    const draft = await build(w)
    await w.flush()
    return w.commit(draft)
  } catch (err) {
    // Let in-flight writes settle before the directory goes (they would fail on the closed fd anyway).
    await Promise.allSettled([w.flush()])
    w.abort()
    throw err
  } finally {
    process.off('SIGINT', onSignal)
  }
}
