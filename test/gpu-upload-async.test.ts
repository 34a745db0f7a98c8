// GPU backend, background uploads: uploadAsync gives what upload gives; layer calls issued while large
// uploads are in flight complete and are correct (and the cache's bookkeeping calls stay quick);
// evicting an expert while a layer call that uses it may be running is safe (the call either finds it
// gone or computes with it to the end); close waits for an upload in flight. Skips cleanly where no
// GPU (or no CUDA build) exists, as on CI.
import t from 'tap'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GpuBackend } from '../runtime/gpu-backend.js'
import { Arena } from '../runtime/arena.js'
import { native, type NativeGpuMatrix } from '../runtime/native.js'
import { HetmoeError } from '../runtime/errors.js'
import { buildFile, gpuSkipReason, referenceRow, rng, toBf16, type Dtype, type Format, type TestExpert } from './helpers/gpu-experts.js'

const skip = gpuSkipReason()

// --- one large dense bf16 SwiGLU expert (sigma-lite sized: 3 x 20 MiB, more than two 8 MiB chunks per matrix)
const BIG_D = 2048
const BIG_F = 5120

interface Big {
  refs: { gate: NativeGpuMatrix; up: NativeGpuMatrix; down: NativeGpuMatrix }
  /** The same weights, decoded to fp32: gate, up [F x D], down [D x F]. */
  gate: Float32Array
  up: Float32Array
  down: Float32Array
  bytes: number
}

function buildBig(path: string, seed: number): Big {
  const r = rng(seed)
  const mats = [[BIG_F, BIG_D], [BIG_F, BIG_D], [BIG_D, BIG_F]].map(([rows, cols]) => {
    const bits = new Uint16Array(rows * cols)
    const scale = 1.7 / Math.sqrt(cols)
    for (let i = 0; i < bits.length; i++) bits[i] = toBf16((2 * r() - 1) * scale)
    const f = new Float32Array(bits.length)
    const u = new Uint32Array(f.buffer)
    for (let i = 0; i < bits.length; i++) u[i] = bits[i] << 16
    return { rows, cols, bits, f }
  })
  const bytes = mats.reduce((s, m) => s + m.bits.byteLength, 0)
  const file = new Uint8Array(bytes)
  let at = 0
  const refs = mats.map((m) => {
    file.set(new Uint8Array(m.bits.buffer), at)
    const ref: NativeGpuMatrix = { rows: m.rows, cols: m.cols, format: 'dense', dtype: 'bf16', values: { offset: at, bytes: m.bits.byteLength } }
    at += m.bits.byteLength
    return ref
  })
  writeFileSync(path, file)
  return { refs: { gate: refs[0], up: refs[1], down: refs[2] }, gate: mats[0].f, up: mats[1].f, down: mats[2].f, bytes }
}

function bigReference(b: Big, x: Float32Array, off: number): Float64Array {
  const h = new Float64Array(BIG_F)
  for (let f = 0; f < BIG_F; f++) {
    let u = 0, g = 0
    const row = f * BIG_D
    for (let d = 0; d < BIG_D; d++) {
      u += b.up[row + d] * x[off + d]
      g += b.gate[row + d] * x[off + d]
    }
    h[f] = (g / (1 + Math.exp(-g))) * u
  }
  const y = new Float64Array(BIG_D)
  for (let d = 0; d < BIG_D; d++) {
    let s = 0
    const row = d * BIG_F
    for (let f = 0; f < BIG_F; f++) s += b.down[row + f] * h[f]
    y[d] = s
  }
  return y
}

function relErr(out: Float32Array, outOff: number, ref: Float64Array): number {
  let num = 0, den = 0
  for (let d = 0; d < ref.length; d++) {
    num += (out[outOff + d] - ref[d]) ** 2
    den += ref[d] ** 2
  }
  return Math.sqrt(num / den)
}

const smallSpecs = (D: number) => [
  { key: 'dense', ffn: 'swiglu' as const, D, F: 320, format: 'dense' as Format, dtype: 'bf16' as Dtype, seed: 21 },
  { key: 's24', ffn: 'swiglu' as const, D, F: 320, format: '2:4' as Format, dtype: 'bf16' as Dtype, seed: 22 },
  { key: 's75', ffn: 'gelu' as const, D, F: 192, format: '75%' as Format, dtype: 'fp32' as Dtype, seed: 23 },
]

/** One layer call over the given experts (every token row random, distinct out rows): its worst rel
 *  error, and the milliseconds the call took (the reference computed here not included). */
async function checkedCall(gpu: GpuBackend, experts: TestExpert[], keys: string[], T: number, r: () => number, hidden: Float32Array, out: Float32Array): Promise<{ worst: number; ms: number }> {
  const D = experts[0].D
  for (let i = 0; i < T * D; i++) hidden[i] = 2 * r() - 1
  let next = 0
  const calls = experts.map((e, k) => {
    const n = 1 + Math.floor(r() * 12)
    return { key: keys[k], tokenRows: Int32Array.from({ length: n }, () => Math.floor(r() * T)), outRows: Int32Array.from({ length: n }, () => next++), scale: Float32Array.from({ length: n }, () => 0.5 + r()) }
  })
  const t0 = performance.now()
  await gpu.runLayer({ experts: calls, hidden, out, D })
  const ms = performance.now() - t0
  let worst = 0
  calls.forEach((c, k) => {
    for (let i = 0; i < c.tokenRows.length; i++) {
      const ref = referenceRow(experts[k], hidden, c.tokenRows[i] * D, c.scale[i])
      worst = Math.max(worst, Number.isFinite(out[c.outRows[i] * D]) ? relErr(out, c.outRows[i] * D, ref) : Infinity)
    }
  })
  return { worst, ms }
}

t.test('uploadAsync gives the same results as upload', { skip }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'hetmoe-gpu-async-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const file = join(dir, 'weights.bin')
  const D = 256
  const experts = buildFile(file, smallSpecs(D))
  const { id } = native().mapWeights(file)
  t.teardown(() => native().unmapWeights(id))
  const gpu = GpuBackend.open()
  t.teardown(() => gpu.close())

  let total = 0
  for (const e of experts) {
    const s = gpu.upload(`${e.key}/sync`, id, e.ffn, e.refs)
    const a = await gpu.uploadAsync(`${e.key}/async`, id, e.ffn, e.refs)
    t.equal(a, s, `${e.key}: the same device bytes (${a})`)
    total += s + a
  }
  // Several at once: they queue behind each other.
  const par = await Promise.all(experts.map((e) => gpu.uploadAsync(`${e.key}/par`, id, e.ffn, e.refs)))
  total += par.reduce((x, y) => x + y, 0)
  t.equal(gpu.bytesUsed, total, 'bytesUsed is the sum of the uploads')
  t.ok(experts.every((e) => gpu.isResident(`${e.key}/async`) && gpu.isResident(`${e.key}/par`)), 'all resident')

  const r = rng(5)
  const T = 40
  const hidden = new Float32Array(T * D)
  for (let i = 0; i < hidden.length; i++) hidden[i] = 2 * r() - 1
  const sel = experts.map((_, k) => ({ tokenRows: Int32Array.from({ length: 9 }, () => Math.floor(r() * T)), outRows: Int32Array.from({ length: 9 }, (_, i) => k * 9 + i), scale: Float32Array.from({ length: 9 }, () => 0.5 + r()) }))
  const outs: Record<string, Float32Array> = {}
  for (const v of ['sync', 'async', 'par']) {
    const out = new Float32Array(experts.length * 9 * D).fill(NaN)
    await gpu.runLayer({ hidden, out, experts: experts.map((e, k) => ({ key: `${e.key}/${v}`, ...sel[k] })) })
    outs[v] = out
  }
  t.ok(outs.async.every((x, i) => Object.is(x, outs.sync[i])), 'async-uploaded experts give bit-identical outputs')
  t.ok(outs.par.every((x, i) => Object.is(x, outs.sync[i])), 'and so do experts uploaded concurrently')
  let worst = 0
  experts.forEach((e, k) => {
    for (let i = 0; i < 9; i++) worst = Math.max(worst, relErr(outs.async, (k * 9 + i) * D, referenceRow(e, hidden, sel[k].tokenRows[i] * D, sel[k].scale[i])))
  })
  t.ok(worst <= 1e-2, `and match the float64 reference (worst rel err ${worst.toExponential(2)})`)

  const small = GpuBackend.open({ budgetBytes: 40000 })
  t.teardown(() => small.close())
  await t.rejects(small.uploadAsync('x', id, experts[1].ffn, experts[1].refs), { code: 'GPU_OOM' }, 'a full budget rejects with GPU_OOM')
  t.equal(small.bytesUsed, 0, 'and leaves nothing reserved')
  await t.rejects(gpu.uploadAsync('y', 9999, 'swiglu', experts[0].refs), { code: 'GPU_ERROR' }, 'an unmapped weights id is an error')
  t.ok(gpu.resident().length === 9, 'failed uploads leave the cache as it was')
})

t.test('layer calls issued while large uploads are in flight complete and are correct', { skip }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'hetmoe-gpu-async-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const D = 256
  const experts = buildFile(join(dir, 'small.bin'), smallSpecs(D))
  const big = buildBig(join(dir, 'big.bin'), 31)
  const small = native().mapWeights(join(dir, 'small.bin')).id
  const bigId = native().mapWeights(join(dir, 'big.bin')).id
  t.teardown(() => (native().unmapWeights(small), native().unmapWeights(bigId)))
  const arena = new Arena({ bytes: 64 << 20 })
  const gpu = GpuBackend.open({ arena })
  t.teardown(() => gpu.close())
  t.comment(`device: ${gpu.deviceName}; arena registration: ${gpu.registration || 'ok'}`)
  for (const e of experts) gpu.upload(e.key, small, e.ffn, e.refs)
  const keys = experts.map((e) => e.key)

  // The same weights file, uploaded once synchronously first: its pages are in memory for every copy.
  const t0 = performance.now()
  const syncBytes = gpu.upload('big/sync', bigId, 'swiglu', big.refs)
  const syncMs = performance.now() - t0
  t.comment(`one ${(big.bytes / 2 ** 20).toFixed(0)} MiB expert, upload(): ${syncMs.toFixed(1)} ms`)

  const T = 64
  const lease = arena.lease(8 * T * D)
  const hidden = new Float32Array(arena.buffer, lease.offset, T * D)
  const out = new Float32Array(arena.buffer, lease.offset + 4 * T * D, T * D)
  const r = rng(77)
  // Warm up the layer path (scratch buffers), then time calls with nothing else going on.
  const idle: number[] = []
  for (let i = 0; i < 30; i++) idle.push((await checkedCall(gpu, experts, keys, T, r, hidden, out)).ms)

  const N = 4
  let pending = N
  const u0 = performance.now()
  const ups = Array.from({ length: N }, (_, i) => gpu.uploadAsync(`big/${i}`, bigId, 'swiglu', big.refs).finally(() => pending--))
  let worst = 0
  let during = 0
  let maxBookkeepingMs = 0
  const busy: number[] = []
  while (pending > 0 && during < 5000) {
    const c = await checkedCall(gpu, experts, keys, T, r, hidden, out)
    worst = Math.max(worst, c.worst)
    if (pending > 0) (during++, busy.push(c.ms))
    const b = performance.now()
    void gpu.bytesUsed
    gpu.isResident('big/0')
    maxBookkeepingMs = Math.max(maxBookkeepingMs, performance.now() - b)
  }
  const bytes = await Promise.all(ups)
  const uploadMs = performance.now() - u0
  const med = (a: number[]) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)] ?? NaN
  t.ok(during > 0, `${during} layer calls completed while ${N} uploads (${((N * big.bytes) / 2 ** 20).toFixed(0)} MiB) were in flight for ${uploadMs.toFixed(1)} ms`)
  t.ok(worst <= 1e-2, `all correct (worst rel err ${worst.toExponential(2)})`)
  t.comment(`layer call median: ${med(idle).toFixed(3)} ms idle, ${med(busy).toFixed(3)} ms during the uploads; ${((N * big.bytes) / uploadMs / 1e6).toFixed(2)} GB/s over the uploads (each starts when this thread takes up the last one's completion)`)
  t.ok(maxBookkeepingMs < 5, `bytesUsed / isResident during the uploads: at most ${maxBookkeepingMs.toFixed(3)} ms`)
  t.ok(bytes.every((b) => b === syncBytes), 'every async upload took the bytes the sync one did')

  // The uploaded experts compute what the float64 reference says, and what the sync copy does.
  const Tb = 3
  const bl = arena.lease(8 * Tb * BIG_D)
  const bh = new Float32Array(arena.buffer, bl.offset, Tb * BIG_D)
  for (let i = 0; i < bh.length; i++) bh[i] = 2 * r() - 1
  const ref = [0, 1, 2].map((k) => bigReference(big, bh, k * BIG_D))
  const outs: Float32Array[] = []
  for (const key of ['big/sync', ...Array.from({ length: N }, (_, i) => `big/${i}`)]) {
    const bo = new Float32Array(arena.buffer, bl.offset + 4 * Tb * BIG_D, Tb * BIG_D).fill(NaN)
    await gpu.runLayer({ hidden: bh, out: bo, experts: [{ key, tokenRows: Int32Array.of(0, 1, 2), outRows: Int32Array.of(0, 1, 2) }] })
    outs.push(Float32Array.from(bo))
  }
  const errs = ref.map((y, k) => relErr(outs[1], k * BIG_D, y))
  t.ok(Math.max(...errs) <= 1e-2, `the large expert matches the float64 reference (rel err ${errs.map((e) => e.toExponential(2)).join(', ')})`)
  t.ok(outs.every((o) => o.every((x, i) => Object.is(x, outs[0][i]))), 'every copy gives the sync upload\'s bits')
  t.equal(gpu.bytesUsed, experts.reduce((s, e) => s + gpu.resident().find((x) => x.key === e.key)!.bytes, 0) + (N + 1) * syncBytes, 'bytesUsed holds the resident experts, nothing more')
})

t.test('evicting an expert while layer calls that use it may be running is safe', { skip }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'hetmoe-gpu-async-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const big = buildBig(join(dir, 'big.bin'), 41)
  const id = native().mapWeights(join(dir, 'big.bin')).id
  t.teardown(() => native().unmapWeights(id))
  const arena = new Arena({ bytes: 128 << 20 })
  const gpu = GpuBackend.open({ arena })
  t.teardown(() => gpu.close())
  const bytes = await gpu.uploadAsync('big', id, 'swiglu', big.refs)

  const T = 2048
  const lease = arena.lease(8 * T * BIG_D)
  const hidden = new Float32Array(arena.buffer, lease.offset, T * BIG_D)
  const out = new Float32Array(arena.buffer, lease.offset + 4 * T * BIG_D, T * BIG_D)
  const r = rng(9)
  for (let i = 0; i < hidden.length; i++) hidden[i] = 2 * r() - 1
  const all = Int32Array.from({ length: T }, (_, i) => i)
  const call = () => gpu.runLayer({ hidden, out, experts: [{ key: 'big', tokenRows: all, outRows: all }] })
  await call()
  const baseline = Float32Array.from(out)
  const ref = bigReference(big, hidden, 5 * BIG_D)
  t.ok(relErr(baseline, 5 * BIG_D, ref) <= 1e-2, 'baseline matches the reference')

  let completed = 0
  let refused = 0
  let ok = true
  for (let round = 0; round < 12; round++) {
    out.fill(NaN)
    const running = call()
    // Evict at once, after a turn of the event loop, or after a short wait: before the call has
    // enqueued its kernels, or while they run, or after.
    if (round % 3 === 1) await new Promise((res) => setImmediate(res))
    if (round % 3 === 2) await new Promise((res) => setTimeout(res, 1))
    t.ok(gpu.evict('big'), `round ${round}: evicted`)
    // Its memory goes back to the pool and a new copy is made at once, possibly into the same bytes.
    const again = gpu.uploadAsync('big', id, 'swiglu', big.refs)
    try {
      await running
      completed++
      ok &&= out.every((x, i) => Object.is(x, baseline[i]))
    } catch (e) {
      refused++
      ok &&= e instanceof HetmoeError && e.code === 'GPU_ERROR' && /not resident/.test(e.message)
    }
    t.equal(await again, bytes, `round ${round}: uploaded again`)
  }
  t.ok(ok, `every call either computed the baseline's bits (${completed}) or found the expert gone (${refused})`)
  await call()
  t.ok(out.every((x, i) => Object.is(x, baseline[i])), 'the expert uploaded again computes the same')
  t.equal(gpu.bytesUsed, bytes, 'bytesUsed: one copy')
  t.ok(gpu.evict('big') && gpu.bytesUsed === 0, 'evicted after the calls: nothing left')
})

t.test('close waits for an upload in flight', { skip }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'hetmoe-gpu-async-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const big = buildBig(join(dir, 'big.bin'), 51)
  const id = native().mapWeights(join(dir, 'big.bin')).id
  const gpu = GpuBackend.open()
  const p = gpu.uploadAsync('big', id, 'swiglu', big.refs).then(() => 'resolved', (e: HetmoeError) => e.code)
  native().unmapWeights(id) // the upload keeps the file mapped until it settles
  await new Promise((res) => setTimeout(res, 1))
  gpu.close()
  const how = await p
  t.ok(how === 'resolved' || how === 'GPU_ERROR', `the upload settled (${how}) and nothing crashed`)
})
