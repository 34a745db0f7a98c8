// The finiteness check of large batches runs on several threads (native/cpu/parallel_scan.cc): it must
// find exactly the first non-finite value wherever it lies — in the first or last chunk, on a chunk
// boundary, in several chunks at once — and none in clean data.
import t from 'tap'
import { native } from '../runtime/native.js'

t.test('firstNonFinite over 32 MiB: the first NaN/Inf wherever it lies, on any thread', async (t) => {
  const n = 8 << 20 // 4096 tokens × D=2048
  const x = new Float32Array(n)
  for (let i = 0; i < n; i += 97) x[i] = (i % 13) - 6.5
  t.equal(native().firstNonFinite(x, n), -1, 'clean data')
  const threads = 16
  const step = Math.ceil(Math.ceil(n / threads) / 16) * 16
  const spots = [0, 1, step - 1, step, step + 1, 5 * step + 7, n - 1]
  for (const at of spots) {
    x[at] = Number.NaN
    t.equal(native().firstNonFinite(x, n), at, `a NaN at ${at}`)
    x[at] = 0
  }
  x[3 * step + 5] = Infinity
  x[9 * step] = -Infinity
  x[n - 2] = Number.NaN
  t.equal(native().firstNonFinite(x, n), 3 * step + 5, 'several chunks hit: the smallest index wins')
  t.equal(native().firstNonFinite(x, 3 * step + 5), -1, 'n bounds the scan')
})
