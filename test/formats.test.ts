import t from 'tap'
import { seededRandom } from '../runtime/token-stream.js'
import { compress, decompress, followsPattern, prune, packedBytes, toBf16, fromBf16, roundToBf16, relativeError } from '../experts/formats.js'

/** Uniform in [-0.5, 0.5), seeded. */
function rand(seed: number): () => number {
  const u = seededRandom(seed)
  return () => u() - 0.5
}

const shapes: [number, number][] = [[2, 16], [6, 48], [8, 128], [10, 272], [32, 64]]

t.test('bf16 rounding matches round-to-nearest-even', async (t) => {
  t.equal(toBf16(1), 0x3f80)
  t.equal(fromBf16(0x3f80), 1)
  t.equal(toBf16(1 + 2 ** -8), 0x3f80, 'tie rounds to even (down)')
  t.equal(toBf16(1 + 3 * 2 ** -8), 0x3f82, 'tie rounds to even (up)')
  t.ok(Number.isNaN(fromBf16(toBf16(NaN))))
  t.equal(fromBf16(toBf16(-Infinity)), -Infinity)
})

for (const format of ['2:4', '75%'] as const) {
  t.test(`${format}: prune, detect, and round-trip exactly (fp32 and bf16)`, async (t) => {
    const r = rand(format === '2:4' ? 1 : 2)
    for (const [rows, cols] of shapes) {
      const w = Float32Array.from({ length: rows * cols }, r)
      t.notOk(followsPattern(w, rows, cols, format), 'random weights are not in the pattern')
      const { pruned, error } = prune(w, rows, cols, format)
      t.ok(followsPattern(pruned, rows, cols, format))
      const density = pruned.filter((x) => x !== 0).length / pruned.length
      t.equal(density, format === '2:4' ? 0.5 : 0.25, `density ${rows}x${cols}`)
      t.ok(error > 0.3 && error < (format === '2:4' ? 0.75 : 0.95), `relative pruning error ${error.toFixed(3)} is plausible`)
      const fp32 = compress(pruned, rows, cols, format, 'fp32')
      t.same(Array.from(decompress(fp32)), Array.from(pruned), `fp32 ${rows}x${cols} round trip is exact`)
      const bf = roundToBf16(pruned)
      const b = compress(bf, rows, cols, format, 'bf16')
      t.same(Array.from(decompress(b)), Array.from(bf), `bf16 ${rows}x${cols} round trip is exact`)
      const sizes = packedBytes(rows, cols, format, 'bf16')
      t.equal(b.values.byteLength, sizes.values)
      t.equal(b.meta!.byteLength, sizes.meta)
      t.equal(b.select?.byteLength ?? 0, sizes.select)
      t.equal(prune(pruned, rows, cols, format).error, 0, 'pruning a pruned matrix loses nothing')
    }
  })
}

t.test('groups with fewer than two nonzeros and all-zero rows survive', async (t) => {
  const rows = 4
  const cols = 32
  const w = new Float32Array(rows * cols)
  w[3] = 1.5 // one nonzero in group 0 of row 0, at position 3
  w[2 * cols + 5] = -2 // row 2, group 1
  for (const format of ['2:4', '75%'] as const) {
    const m = compress(w, rows, cols, format, 'fp32')
    t.same(Array.from(decompress(m)), Array.from(w), format)
  }
  t.throws(() => compress(Float32Array.from({ length: 64 }, () => 1), 2, 32, '2:4', 'fp32'), /does not follow the 2:4 pattern/)
  t.throws(() => prune(new Float32Array(40), 2, 20, '2:4'), /cols % 16 == 0/)
  t.throws(() => prune(new Float32Array(48), 3, 16, '75%'), /even number of rows/)
})

t.test('relativeError', async (t) => {
  t.equal(relativeError(new Float32Array([3, 4]), new Float32Array([3, 4])), 0)
  t.equal(relativeError(new Float32Array([3, 4]), new Float32Array([0, 0])), 1)
})
