// The finiteness check of large batches runs in chunks on a pool of threads (native/cpu/parallel_scan.cc):
// it must find exactly the first non-finite value wherever it lies — in the first or last chunk, on a
// chunk boundary, in several chunks at once — none in clean data, and stay exact when several threads
// scan at once (one of them gets the pool, the others scan alone).
import t from 'tap'
import { Worker } from 'node:worker_threads'
import { native } from '../runtime/native.js'

const CHUNK = 1 << 16 // floats per pool chunk

t.test('firstNonFinite over 32 MiB: the first NaN/Inf wherever it lies, on any thread', async (t) => {
  const n = 8 << 20 // 4096 tokens × D=2048
  const x = new Float32Array(n)
  for (let i = 0; i < n; i += 97) x[i] = (i % 13) - 6.5
  t.equal(native().firstNonFinite(x, n), -1, 'clean data')
  const spots = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK + 7, 64 * CHUNK - 1, n - 1]
  for (const at of spots) {
    x[at] = Number.NaN
    t.equal(native().firstNonFinite(x, n), at, `a NaN at ${at}`)
    x[at] = 0
  }
  x[3 * CHUNK + 5] = Infinity
  x[9 * CHUNK] = -Infinity
  x[n - 2] = Number.NaN
  t.equal(native().firstNonFinite(x, n), 3 * CHUNK + 5, 'several chunks hit: the smallest index wins')
  t.equal(native().firstNonFinite(x, 3 * CHUNK + 5), -1, 'n bounds the scan')
  t.equal(native().firstNonFinite(x.subarray(1), 3 * CHUNK + 5), 3 * CHUNK + 4, 'an unaligned start')
})

t.test('sizes around the pool threshold and a partial last chunk', async (t) => {
  for (const n of [1, 15, 17, 1023, 1025, 2 * CHUNK - 1, 2 * CHUNK, (1 << 18) - 1, 1 << 18, (1 << 18) + 3, 5 * CHUNK + 123]) {
    const x = new Float32Array(n).fill(1.5)
    t.equal(native().firstNonFinite(x, n), -1, `n=${n} clean`)
    x[n - 1] = -Infinity
    t.equal(native().firstNonFinite(x, n), n - 1, `n=${n} last`)
    x[n >> 1] = Number.NaN
    t.equal(native().firstNonFinite(x, n), n >> 1, `n=${n} middle`)
  }
})

t.test('scanPoolMinFloats says from how many values the pool shares a scan', async (t) => {
  // 1 MiB by default (2 chunks at least); HETMOE_SCAN_PARALLEL_MIN=0 turns the pool off.
  const min = native().scanPoolMinFloats()
  if (process.env.HETMOE_SCAN_PARALLEL_MIN === '0') t.equal(min, 0, 'pool off')
  else if (process.env.HETMOE_SCAN_PARALLEL_MIN) t.ok(min >= 2 * CHUNK, 'at least two chunks')
  else t.equal(min, 1 << 18, '1 MiB of floats')
})

t.test('several threads scanning at once all get exact answers', async (t) => {
  // Each worker scans its own 8 MiB array 200 times, moving a NaN around; the main thread does the
  // same meanwhile, so the pool is contended.
  const src = `
    const { parentPort, workerData } = require('node:worker_threads')
    import(workerData.nativeUrl).then(({ native }) => {
    const a = native()
    const n = 2 << 20, x = new Float32Array(n).fill(0.25)
    let wrong = 0
    for (let r = 0; r < 200; r++) {
      const at = (r * 7919 * 131 + workerData.seed) % n
      x[at] = NaN
      if (a.firstNonFinite(x, n) !== at) wrong++
      x[at] = 0.25
    }
    parentPort.postMessage(wrong)
    })`
  const nativeUrl = new URL('../runtime/native.js', import.meta.url).href
  const runs = [1, 2].map(
    (seed) =>
      new Promise<number>((resolve, reject) => {
        const w = new Worker(src, { eval: true, workerData: { nativeUrl, seed } })
        w.on('message', resolve)
        w.on('error', reject)
      }),
  )
  const n = 2 << 20
  const x = new Float32Array(n).fill(-0.5)
  let wrong = 0
  for (let r = 0; r < 200; r++) {
    const at = (r * 104729) % n
    x[at] = Infinity
    if (native().firstNonFinite(x, n) !== at) wrong++
    x[at] = -0.5
  }
  t.equal(wrong, 0, 'main thread: every scan exact')
  t.same(await Promise.all(runs), [0, 0], 'worker threads: every scan exact')
})
