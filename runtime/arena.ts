// The shared-memory arena: one SharedArrayBuffer per runtime, handed to every worker once; work is
// described by (offset, length) pairs into it, never by buffers. Hidden states, selection arrays,
// outputs and scratch all live here, so neither the CPU workers nor the GPU's DMA copy activations
// through JavaScript.
//
// Allocation happens on the thread that owns the Arena (the runtime's thread) only, so the free
// list needs no atomics; workers never allocate, they read and write inside leases they were given.
import { HetmoeError, badOption } from './errors.js'
import { native } from './native.js'

export const PAGE_BYTES = 4096
/** Default lease alignment: a cache line pair, enough for AVX-512 loads and GPU 128-byte transactions. */
export const DEFAULT_ALIGN = 256

const alignUp = (n: number, a: number): number => Math.ceil(n / a) * a

export interface ArenaOptions {
  /** Total bytes; rounded up to whole pages. */
  bytes: number
}

interface FreeBlock {
  offset: number
  length: number
}

export class Arena {
  readonly buffer: SharedArrayBuffer
  readonly byteLength: number
  #free: FreeBlock[]
  #leased = new Map<number, number>() // offset -> length
  #closed = false

  /** Offset of the first page-aligned byte: V8 aligns a SharedArrayBuffer's memory to 16 bytes only. */
  readonly base: number

  constructor(options: ArenaOptions) {
    if (!Number.isSafeInteger(options?.bytes) || options.bytes <= 0)
      throw badOption('bytes', 'a positive integer number of bytes', options?.bytes)
    this.byteLength = alignUp(options.bytes, PAGE_BYTES)
    // One spare page, so that offsets measured from `base` are page-aligned in memory too: SIMD
    // loads, cudaHostRegister and DMA all want that, and lease alignment is relative to `base`.
    this.buffer = new SharedArrayBuffer(this.byteLength + PAGE_BYTES)
    this.base = (PAGE_BYTES - native().addressMod(new Uint8Array(this.buffer), PAGE_BYTES)) % PAGE_BYTES
    this.#free = [{ offset: this.base, length: this.byteLength }]
  }

  /** Bytes not leased (possibly fragmented). */
  get freeBytes(): number {
    return this.#free.reduce((s, b) => s + b.length, 0)
  }

  get leasedBytes(): number {
    return this.byteLength - this.freeBytes
  }

  /** Takes `bytes` (rounded up to the alignment) from the first free region that fits. */
  lease(bytes: number, align: number = DEFAULT_ALIGN): Lease {
    if (this.#closed) throw new HetmoeError('ARENA_RELEASED', 'the arena was closed; create a new runtime')
    if (!Number.isSafeInteger(bytes) || bytes < 0) throw badOption('bytes', 'a non-negative integer', bytes)
    if (!Number.isInteger(align) || align <= 0 || (align & (align - 1)) !== 0 || align > PAGE_BYTES)
      throw badOption('align', `a power of two up to ${PAGE_BYTES}`, align)
    const length = alignUp(Math.max(bytes, 1), align)
    const free = this.#free
    for (let i = 0; i < free.length; i++) {
      const b = free[i]
      const start = this.base + alignUp(b.offset - this.base, align)
      const end = start + length
      const blockEnd = b.offset + b.length
      if (end > blockEnd) continue
      // The block shrinks in place (or goes, or splits in two): a forward takes and returns a few
      // leases, so this path allocates nothing but the Lease.
      if (start > b.offset) {
        b.length = start - b.offset
        if (end < blockEnd) free.splice(i + 1, 0, { offset: end, length: blockEnd - end })
      } else if (end < blockEnd) {
        b.offset = end
        b.length = blockEnd - end
      } else free.splice(i, 1)
      this.#leased.set(start, length)
      return new Lease(this, start, bytes)
    }
    const largest = this.#free.reduce((m, b) => Math.max(m, b.length), 0)
    throw new HetmoeError(
      'ARENA_EXHAUSTED',
      `the shared-memory arena (${mib(this.byteLength)}) has no free region of ${bytes} bytes: ` +
        `${mib(this.freeBytes)} free in ${this.#free.length} pieces, the largest ${mib(largest)}. ` +
        'Use smaller batches or a larger arena (createRuntime({ arenaBytes }) or HETMOE_ARENA_MB).',
    )
  }

  /** @internal Called by Lease.release(). */
  _release(offset: number): void {
    const length = this.#leased.get(offset)
    if (length === undefined) throw new HetmoeError('ARENA_RELEASED', `no lease at offset ${offset} (released twice?)`)
    this.#leased.delete(offset)
    // Insert in offset order, merged with its neighbours, so free space does not fragment over time
    // (the list is kept merged, so only the two neighbours can touch the returned block).
    const free = this.#free
    let i = 0
    while (i < free.length && free[i].offset < offset) i++
    const prev = i > 0 ? free[i - 1] : undefined
    const next = i < free.length ? free[i] : undefined
    const end = offset + length
    if (prev && prev.offset + prev.length === offset) {
      prev.length += length
      if (next && next.offset === end) {
        prev.length += next.length
        free.splice(i, 1)
      }
    } else if (next && next.offset === end) {
      next.offset = offset
      next.length += length
    } else free.splice(i, 0, { offset, length })
  }

  /** Drops every lease; views taken earlier keep the memory alive but must not be used. */
  close(): void {
    this.#closed = true
    this.#leased.clear()
    this.#free = []
  }
}

/** A region of the arena. Typed views over it share memory with every worker. */
export class Lease {
  readonly arena: Arena
  /** Byte offset into arena.buffer (page- or `align`-aligned in memory). */
  readonly offset: number
  /** Bytes asked for (the arena may reserve a little more, up to the alignment). */
  readonly length: number
  #released = false

  constructor(arena: Arena, offset: number, length: number) {
    this.arena = arena
    this.offset = offset
    this.length = length
  }

  get released(): boolean {
    return this.#released
  }

  #check(byteOffset: number, bytes: number): void {
    if (this.#released) throw new HetmoeError('ARENA_RELEASED', `lease at ${this.offset} was already released`)
    if (byteOffset < 0 || byteOffset + bytes > this.length)
      throw new RangeError(`view [${byteOffset}, +${bytes}) is outside the ${this.length}-byte lease`)
  }

  f32(count = Math.floor(this.length / 4), byteOffset = 0): Float32Array {
    this.#check(byteOffset, count * 4)
    return new Float32Array(this.arena.buffer, this.offset + byteOffset, count)
  }

  i32(count = Math.floor(this.length / 4), byteOffset = 0): Int32Array {
    this.#check(byteOffset, count * 4)
    return new Int32Array(this.arena.buffer, this.offset + byteOffset, count)
  }

  f64(count = Math.floor(this.length / 8), byteOffset = 0): Float64Array {
    this.#check(byteOffset, count * 8)
    return new Float64Array(this.arena.buffer, this.offset + byteOffset, count)
  }

  u16(count = Math.floor(this.length / 2), byteOffset = 0): Uint16Array {
    this.#check(byteOffset, count * 2)
    return new Uint16Array(this.arena.buffer, this.offset + byteOffset, count)
  }

  u8(count = this.length, byteOffset = 0): Uint8Array {
    this.#check(byteOffset, count)
    return new Uint8Array(this.arena.buffer, this.offset + byteOffset, count)
  }

  release(): void {
    if (this.#released) return
    this.#released = true
    this.arena._release(this.offset)
  }

  [Symbol.dispose](): void {
    this.release()
  }
}

function mib(bytes: number): string {
  return `${(bytes / 1048576).toFixed(bytes < 1048576 ? 3 : 1)} MiB`
}
