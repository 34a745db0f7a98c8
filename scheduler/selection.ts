// A selection: which token rows each expert of one layer computes, and where each result goes.
// Routers write it into caller-provided views (the runtime hands arena views, so the CPU workers
// and the GPU's DMA read it in place); backends read it; the combine step follows outRows/scales.
//
// Layout, for E experts and N = T·K routed rows (K = 1 for RRE, top-k for gates):
//   counts[E]      rows routed to expert e
//   offsets[E+1]   expert e's rows are [offsets[e], offsets[e+1]) of the three arrays below
//   tokenRows[N]   the hidden-state row (token index) to read, ascending within each expert
//   outRows[N]     the output row to write: the token for top-1, token·K + slot for top-k, where slot
//                  is the rank in that token's top-k — so a combine step that sums rows t·K … t·K+K−1
//                  adds the k results of token t in a fixed order, whatever device computed them
//   scales[N]      the routing weight to multiply the expert's output by (1 for RRE)
import { HetmoeError } from '../runtime/errors.js'

export interface Selection {
  counts: Int32Array
  offsets: Int32Array
  tokenRows: Int32Array
  outRows: Int32Array
  scales: Float32Array
}

/** Bytes that selectionViews needs for `numExperts` experts and up to `capacity` routed rows (4-byte aligned). */
export function selectionBytes(numExperts: number, capacity: number): number {
  return 4 * (2 * numExperts + 1 + 3 * capacity)
}

/** Views over `buffer` (e.g. an arena lease: `selectionViews(lease.arena.buffer, lease.offset, …)`). */
export function selectionViews(
  buffer: ArrayBufferLike,
  byteOffset: number,
  numExperts: number,
  capacity: number,
): Selection {
  if (byteOffset % 4 !== 0) throw new RangeError(`selection byteOffset must be a multiple of 4 (got ${byteOffset})`)
  let at = byteOffset
  const take = <T>(make: (b: ArrayBufferLike, o: number, n: number) => T, n: number): T => {
    const v = make(buffer, at, n)
    at += 4 * n
    return v
  }
  const i32 = (b: ArrayBufferLike, o: number, n: number) => new Int32Array(b, o, n)
  return {
    counts: take(i32, numExperts),
    offsets: take(i32, numExperts + 1),
    tokenRows: take(i32, capacity),
    outRows: take(i32, capacity),
    scales: take((b, o, n) => new Float32Array(b, o, n), capacity),
  }
}

/** A selection in its own memory: tests, tools, and callers without an arena. */
export function allocSelection(numExperts: number, capacity: number): Selection {
  return selectionViews(new ArrayBuffer(selectionBytes(numExperts, capacity)), 0, numExperts, capacity)
}

/** Throws unless `out` can take `rows` routed rows for `numExperts` experts. */
export function checkSelection(out: Selection, numExperts: number, rows: number): void {
  if (out.counts.length < numExperts || out.offsets.length < numExperts + 1)
    throw new HetmoeError('BAD_INPUT', `the selection has room for ${out.counts.length} experts; this layer has ${numExperts}`)
  if (out.tokenRows.length < rows || out.outRows.length < rows || out.scales.length < rows)
    throw new HetmoeError(
      'BAD_INPUT',
      `the selection has room for ${Math.min(out.tokenRows.length, out.outRows.length, out.scales.length)} routed rows; this batch routes ${rows}`,
    )
}

/** Turns counts[0..E) into offsets[0..E]; returns the total. */
export function countsToOffsets(counts: Int32Array, offsets: Int32Array, numExperts: number): number {
  let sum = 0
  for (let e = 0; e < numExperts; e++) {
    offsets[e] = sum
    sum += counts[e]
  }
  offsets[numExperts] = sum
  return sum
}
