// Reading Hugging Face safetensors checkpoints: one file, or shards listed by
// `model.safetensors.index.json`. A file is: u64 little-endian header length N, N bytes of JSON
// ({name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}), then the data, with
// offsets relative to the end of the header. Everything in the header is checked before any tensor
// is read — lengths, JSON, dtypes, shapes, offsets inside the data and not overlapping, byte counts
// matching shape × dtype — and every error is a HetmoeError('BAD_MODEL') naming the file and tensor.
import { closeSync, existsSync, fstatSync, openSync, readFileSync, readSync, readdirSync } from 'node:fs'
import { basename, join, resolve } from 'node:path'
import { HetmoeError } from '../runtime/errors.js'
import { IO_CHUNK } from './store-writer.js'

/** Bytes per element of every dtype the safetensors format defines. */
export const DTYPE_BYTES: Record<string, number> = {
  BOOL: 1, U8: 1, I8: 1, F8_E4M3: 1, F8_E5M2: 1, I16: 2, U16: 2, F16: 2, BF16: 2, I32: 4, U32: 4, F32: 4, I64: 8, U64: 8, F64: 8,
}
/** The dtypes hetmoe imports weights from. */
export const FLOAT_DTYPES = ['F32', 'F16', 'BF16'] as const

/** Headers larger than this are refused (real ones are a few hundred KB). */
const MAX_HEADER_BYTES = 100 * 2 ** 20
export const INDEX_FILE = 'model.safetensors.index.json'

export interface TensorInfo {
  name: string
  dtype: string
  shape: number[]
  /** Absolute byte offset of the data in `file`. */
  offset: number
  bytes: number
  file: string
}

function bad(message: string): never {
  throw new HetmoeError('BAD_MODEL', message)
}

/** One .safetensors file, header parsed and validated; tensors are read on demand. */
export class SafetensorsFile {
  readonly path: string
  readonly size: number
  readonly tensors = new Map<string, TensorInfo>()
  readonly metadata: Record<string, string> = {}
  #fd: number

  private constructor(path: string, fd: number, size: number) {
    this.path = path
    this.#fd = fd
    this.size = size
  }

  static open(path: string): SafetensorsFile {
    let fd: number
    try {
      fd = openSync(path, 'r')
    } catch (err) {
      bad(`${path}: cannot open (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`)
    }
    try {
      const f = new SafetensorsFile(path, fd, fstatSync(fd).size)
      f.#parseHeader()
      return f
    } catch (err) {
      closeSync(fd)
      throw err
    }
  }

  #parseHeader(): void {
    const p = this.path
    if (this.size < 8) bad(`${p}: ${this.size} bytes is too short for a safetensors file (no header length)`)
    const lenBuf = Buffer.alloc(8)
    readSync(this.#fd, lenBuf, 0, 8, 0)
    const n = lenBuf.readBigUInt64LE(0)
    if (n > BigInt(this.size - 8)) bad(`${p}: header length ${n} runs past the end of the ${this.size}-byte file (truncated or not safetensors)`)
    if (n > BigInt(MAX_HEADER_BYTES)) bad(`${p}: header length ${n} is implausibly large`)
    const headerBytes = Number(n)
    const buf = Buffer.alloc(headerBytes)
    if (headerBytes) readSync(this.#fd, buf, 0, headerBytes, 8)
    let header: unknown
    try {
      header = JSON.parse(buf.toString('utf8'))
    } catch (err) {
      bad(`${p}: the header is not JSON (${(err as Error).message})`)
    }
    if (typeof header !== 'object' || header === null || Array.isArray(header)) bad(`${p}: the header is not a JSON object`)
    const dataStart = 8 + headerBytes
    const dataBytes = this.size - dataStart
    for (const [name, v] of Object.entries(header as Record<string, unknown>)) {
      if (name === '__metadata__') {
        if (typeof v !== 'object' || v === null || Array.isArray(v)) bad(`${p}: __metadata__ is not an object`)
        for (const [k, s] of Object.entries(v as Record<string, unknown>)) if (typeof s === 'string') this.metadata[k] = s
        continue
      }
      const where = `${p}: tensor "${name}"`
      if (typeof v !== 'object' || v === null || Array.isArray(v)) bad(`${where}: entry is not an object`)
      const e = v as Record<string, unknown>
      if (typeof e.dtype !== 'string' || !(e.dtype in DTYPE_BYTES)) bad(`${where}: unknown dtype ${JSON.stringify(e.dtype)}`)
      const dtype = e.dtype
      if (!Array.isArray(e.shape) || e.shape.some((d) => typeof d !== 'number' || !Number.isSafeInteger(d) || d < 0)) {
        bad(`${where}: shape ${JSON.stringify(e.shape)} is not a list of non-negative integers`)
      }
      const shape = e.shape as number[]
      let numel = 1
      for (const d of shape) {
        numel *= d
        if (numel > Number.MAX_SAFE_INTEGER) bad(`${where}: shape ${JSON.stringify(shape)} is too large`)
      }
      const off = e.data_offsets
      if (!Array.isArray(off) || off.length !== 2 || off.some((o) => typeof o !== 'number' || !Number.isSafeInteger(o) || o < 0)) {
        bad(`${where}: data_offsets ${JSON.stringify(off)} is not a pair of non-negative integers`)
      }
      const [begin, end] = off as [number, number]
      if (begin > end || end > dataBytes) bad(`${where}: data_offsets [${begin}, ${end}] are outside the ${dataBytes} data bytes`)
      const expected = numel * DTYPE_BYTES[dtype]
      if (end - begin !== expected) bad(`${where}: data_offsets [${begin}, ${end}] hold ${end - begin} bytes, shape ${JSON.stringify(shape)} × ${dtype} needs ${expected}`)
      this.tensors.set(name, { name, dtype, shape: shape.slice(), offset: dataStart + begin, bytes: expected, file: p })
    }
    const sorted = [...this.tensors.values()].filter((t) => t.bytes > 0).sort((a, b) => a.offset - b.offset)
    for (let i = 1; i < sorted.length; i++) {
      const prev = sorted[i - 1]
      if (sorted[i].offset < prev.offset + prev.bytes) bad(`${p}: tensor "${sorted[i].name}" overlaps tensor "${prev.name}"`)
    }
  }

  /** Reads a float tensor (F32, F16 or BF16) into fp32. */
  readFloat32(name: string): Float32Array {
    return toFloat32(this.#info(name), this.readRaw(name))
  }

  /** The tensor's bytes as stored (little-endian, its own dtype). */
  readRaw(name: string): Uint8Array {
    const t = this.#info(name)
    const raw = new Uint8Array(t.bytes)
    let done = 0
    while (done < t.bytes) {
      const n = readSync(this.#fd, raw, done, Math.min(t.bytes - done, IO_CHUNK), t.offset + done)
      if (n === 0) bad(`${t.file}: tensor "${t.name}": file ended while reading`)
      done += n
    }
    return raw
  }

  #info(name: string): TensorInfo {
    const t = this.tensors.get(name)
    if (!t) bad(`${this.path}: no tensor "${name}"`)
    return t
  }

  close(): void {
    if (this.#fd >= 0) closeSync(this.#fd)
    this.#fd = -1
  }
}

let halfTable: Float32Array | undefined
/** IEEE half → float for all 65,536 bit patterns (built once). */
function halfToFloatTable(): Float32Array {
  if (halfTable) return halfTable
  halfTable = new Float32Array(65536)
  for (let h = 0; h < 65536; h++) {
    const s = h & 0x8000 ? -1 : 1
    const e = (h >> 10) & 0x1f
    const m = h & 0x3ff
    halfTable[h] = e === 0 ? s * m * 2 ** -24 : e === 31 ? (m ? NaN : s * Infinity) : s * (1 + m / 1024) * 2 ** (e - 15)
  }
  return halfTable
}

function toFloat32(t: TensorInfo, raw: Uint8Array): Float32Array {
  if (!(FLOAT_DTYPES as readonly string[]).includes(t.dtype)) {
    bad(`${t.file}: tensor "${t.name}": dtype ${t.dtype} is not a float type hetmoe imports (${FLOAT_DTYPES.join(', ')})`)
  }
  if (t.dtype === 'F32') return new Float32Array(raw.buffer)
  const src = new Uint16Array(raw.buffer)
  const out = new Float32Array(src.length)
  if (t.dtype === 'BF16') {
    const o = new Uint32Array(out.buffer)
    for (let i = 0; i < src.length; i++) o[i] = src[i] << 16
  } else {
    const table = halfToFloatTable()
    for (let i = 0; i < src.length; i++) out[i] = table[src[i]]
  }
  return out
}

/** A checkpoint directory: one safetensors file, or shards with an index. */
export class Checkpoint {
  readonly dir: string
  readonly files: SafetensorsFile[] = []
  readonly #byName = new Map<string, SafetensorsFile>()

  private constructor(dir: string) {
    this.dir = dir
  }

  static open(dir: string): Checkpoint {
    const root = resolve(dir)
    const ck = new Checkpoint(root)
    try {
      ck.#open()
    } catch (err) {
      ck.close()
      throw err
    }
    return ck
  }

  #open(): void {
    const indexPath = join(this.dir, INDEX_FILE)
    if (existsSync(indexPath)) {
      let index: unknown
      try {
        index = JSON.parse(readFileSync(indexPath, 'utf8'))
      } catch (err) {
        bad(`${indexPath}: not JSON (${(err as Error).message})`)
      }
      const map = (index as { weight_map?: unknown } | null)?.weight_map
      if (typeof map !== 'object' || map === null || Array.isArray(map)) bad(`${indexPath}: no "weight_map" object`)
      const shards = new Map<string, SafetensorsFile>()
      for (const [name, file] of Object.entries(map as Record<string, unknown>)) {
        if (typeof file !== 'string' || file !== basename(file) || file === '..' || file === '.' || file === '') {
          bad(`${indexPath}: tensor "${name}" maps to ${JSON.stringify(file)}, not a file name in the checkpoint directory`)
        }
        let shard = shards.get(file)
        if (!shard) {
          const path = join(this.dir, file)
          if (!existsSync(path)) bad(`${indexPath}: shard ${file} (holding tensor "${name}") is missing from ${this.dir}`)
          shard = SafetensorsFile.open(path)
          shards.set(file, shard)
          this.files.push(shard)
        }
        if (!shard.tensors.has(name)) bad(`${shard.path}: tensor "${name}" is listed in ${INDEX_FILE} but not in this shard`)
        this.#byName.set(name, shard)
      }
      return
    }
    let names: string[]
    try {
      names = readdirSync(this.dir).filter((f) => f.endsWith('.safetensors')).sort()
    } catch (err) {
      bad(`${this.dir}: cannot read the checkpoint directory (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`)
    }
    if (names.length === 0) bad(`${this.dir}: no .safetensors file`)
    if (names.length > 1) bad(`${this.dir}: ${names.length} .safetensors files but no ${INDEX_FILE} saying which tensor is where`)
    const f = SafetensorsFile.open(join(this.dir, names[0]))
    this.files.push(f)
    for (const name of f.tensors.keys()) this.#byName.set(name, f)
  }

  names(): IterableIterator<string> {
    return this.#byName.keys()
  }

  tensor(name: string): TensorInfo | undefined {
    return this.#byName.get(name)?.tensors.get(name)
  }

  readFloat32(name: string): Float32Array {
    return this.#file(name).readFloat32(name)
  }

  readRaw(name: string): Uint8Array {
    return this.#file(name).readRaw(name)
  }

  #file(name: string): SafetensorsFile {
    const f = this.#byName.get(name)
    if (!f) bad(`${this.dir}: no tensor "${name}" in the checkpoint`)
    return f
  }

  close(): void {
    for (const f of this.files) f.close()
  }
}
