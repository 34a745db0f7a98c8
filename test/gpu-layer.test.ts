// GPU backend: the layer kernel in every format against a float64 reference computed here from the
// layout.h bytes (the reference decoder's semantics), random weights, inputs and routings, experts
// with 0 tokens and token counts that are not multiples of any tile; outputs poisoned with NaN and
// every element checked (written rows close to the reference, other rows untouched). Skips cleanly
// where no GPU (or no CUDA build) exists, as on CI.
import t from 'tap'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { GpuBackend } from '../runtime/gpu-backend.js'
import { Arena } from '../runtime/arena.js'
import { native } from '../runtime/native.js'
import { HetmoeError } from '../runtime/errors.js'
import { buildFile, gpuSkipReason, referenceRow, rng, type Dtype, type Format } from './helpers/gpu-experts.js'

const skip = gpuSkipReason()

/** The experts written to a weights file in a temporary folder and mapped, both undone at the test's end. */
function mappedExperts(t: { teardown(f: () => unknown): void }, specs: Parameters<typeof buildFile>[1]): { experts: ReturnType<typeof buildFile>; id: number } {
  const dir = mkdtempSync(join(tmpdir(), 'hetmoe-gpu-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const file = join(dir, 'weights.bin')
  const experts = buildFile(file, specs)
  const { id } = native().mapWeights(file)
  t.teardown(() => native().unmapWeights(id))
  return { experts, id }
}

t.test('GPU layer kernel matches a float64 reference in every format', { skip }, async (t) => {
  const D = 256
  const specs = [
    { key: 'dense-a', ffn: 'swiglu' as const, D, F: 320, format: 'dense' as Format, dtype: 'bf16' as Dtype, seed: 11 },
    { key: 'dense-b', ffn: 'gelu' as const, D, F: 192, format: 'dense' as Format, dtype: 'fp32' as Dtype, seed: 12 },
    { key: 's24-a', ffn: 'swiglu' as const, D, F: 320, format: '2:4' as Format, dtype: 'bf16' as Dtype, seed: 13 },
    { key: 's24-b', ffn: 'swiglu' as const, D, F: 320, format: '2:4' as Format, dtype: 'bf16' as Dtype, seed: 14 },
    { key: 's24-c', ffn: 'gelu' as const, D, F: 192, format: '2:4' as Format, dtype: 'fp32' as Dtype, seed: 15 },
    { key: 's75-a', ffn: 'swiglu' as const, D, F: 320, format: '75%' as Format, dtype: 'bf16' as Dtype, seed: 16 },
    { key: 's75-b', ffn: 'swiglu' as const, D, F: 320, format: '75%' as Format, dtype: 'bf16' as Dtype, seed: 17 },
    { key: 's75-c', ffn: 'gelu' as const, D, F: 192, format: '75%' as Format, dtype: 'fp32' as Dtype, seed: 18 },
  ]
  const { experts, id } = mappedExperts(t, specs)

  const arena = new Arena({ bytes: 16 << 20 })
  const notes: string[] = []
  const gpu = GpuBackend.open({ arena, warn: (l) => notes.push(l) })
  t.teardown(() => gpu.close())
  t.comment(`device: ${gpu.deviceName}; arena registration: ${gpu.registration || 'ok'}`)
  let total = 0
  for (const e of experts) total += gpu.upload(e.key, id, e.ffn, e.refs)
  t.equal(gpu.bytesUsed, total, 'bytesUsed is the sum of the uploads')
  t.ok(experts.every((e) => gpu.isResident(e.key)), 'all experts resident')
  t.equal(gpu.resident().length, experts.length)

  const r = rng(99)
  // Token counts: 0, 1, 7, 9, 17, 33, 40, 100 ... (not multiples of 8/16/32); one expert gets 0.
  // The last two sets reach the large-batch kernel (sm_90: format groups whose largest expert has
  // >= 32 tokens, see moe_launch.cuh), with counts that are not multiples of its 64/128/256-token
  // tiles and 0- and 1-token experts in a large group. bench/gpu/device-run.sh also runs this file
  // with HETMOE_WGMMA_MIN=1 (every group on the large-batch kernel).
  const counts = [
    [0, 3, 9, 17, 1, 33, 40, 7],
    [100, 0, 5, 0, 64, 2, 13, 31],
    [1, 1, 1, 1, 1, 1, 1, 1],
    [300, 1100, 0, 65, 1100, 300, 257, 129],
    [64, 63, 1100, 1, 300, 0, 77, 1100],
  ]
  for (let round = 0; round < counts.length * 2; round++) {
    const useArena = round % 2 === 0
    const cnt = counts[Math.floor(round / 2)]
    const T = Math.max(120, Math.max(...cnt))
    const totalSel = cnt.reduce((a, b) => a + b, 0)
    const outRowsN = totalSel + 17 // extra rows that must stay untouched
    const lease = useArena ? arena.lease(4 * D * (T + outRowsN)) : undefined
    const hidden = lease ? new Float32Array(arena.buffer, lease.offset, T * D) : new Float32Array(T * D)
    const out = lease ? new Float32Array(arena.buffer, lease.offset + 4 * T * D, outRowsN * D) : new Float32Array(outRowsN * D)
    for (let i = 0; i < hidden.length; i++) hidden[i] = 2 * r() - 1
    out.fill(NaN)
    // distinct out rows across the call, in random order
    const perm = Array.from({ length: outRowsN }, (_, i) => i).sort(() => r() - 0.5)
    let next = 0
    const calls = experts.map((e, k) => {
      const n = cnt[k]
      const tokenRows = Int32Array.from({ length: n }, () => Math.floor(r() * T))
      const outRows = Int32Array.from({ length: n }, () => perm[next++])
      const scale = k % 3 === 2 ? undefined : Float32Array.from({ length: n }, () => 0.1 + r())
      return { key: e.key, tokenRows, outRows, scale }
    })
    const timing = await gpu.runLayer({ experts: calls, hidden, out })
    t.equal(timing.staged, !useArena || gpu.registration !== '', `round ${round}: staged flag`)
    let worst = 0
    let written = 0
    const writtenRows = new Set<number>()
    for (let k = 0; k < experts.length; k++) {
      const c = calls[k]
      let num = 0, den = 0
      let finite = true
      for (let i = 0; i < c.tokenRows.length; i++) {
        const ref = referenceRow(experts[k], hidden, c.tokenRows[i] * D, c.scale ? c.scale[i] : 1)
        const o = c.outRows[i] * D
        writtenRows.add(c.outRows[i])
        for (let d = 0; d < D; d++) {
          const v = out[o + d]
          if (!Number.isFinite(v)) finite = false
          num += (v - ref[d]) ** 2
          den += ref[d] ** 2
          written++
        }
      }
      if (c.tokenRows.length === 0) continue
      const rel = Math.sqrt(num / den)
      worst = Math.max(worst, rel)
      t.ok(finite && rel <= 1e-2, `round ${round} ${experts[k].key} (${specs[k].format}/${specs[k].dtype}/${specs[k].ffn}) n=${c.tokenRows.length}: rel err ${rel.toExponential(2)}`)
    }
    let untouched = true
    for (let row = 0; row < outRowsN; row++)
      if (!writtenRows.has(row)) for (let d = 0; d < D; d++) untouched &&= Number.isNaN(out[row * D + d])
    t.ok(untouched, `round ${round}: rows not selected stay untouched`)
    t.comment(`round ${round} (${useArena ? 'arena' : 'staged'}): ${written} elements checked, worst rel err ${worst.toExponential(2)}, gpu ${timing.gpuMs.toFixed(3)} ms`)
    // The same call inline (this thread waits for the device): the same bits, rows outside it untouched.
    const first = Float32Array.from(out)
    out.fill(NaN)
    const inline = await gpu.runLayer({ experts: calls, hidden, out }, { inline: true })
    t.ok(inline.kernelMs > 0 && inline.hostMs >= inline.gpuMs * 0.5, `round ${round}: inline call timed (${inline.hostMs.toFixed(3)} ms on this thread)`)
    t.ok(new Uint32Array(out.buffer, out.byteOffset, out.length).every((b, i) => b === new Uint32Array(first.buffer)[i]), `round ${round}: inline gives the same bits`)
    if (lease) lease.release()
  }

  t.ok(gpu.evict('s24-b'), 'evict')
  t.notOk(gpu.isResident('s24-b'))
  t.notOk(gpu.evict('s24-b'), 'evicting twice says false')
  await t.rejects(
    gpu.runLayer({ experts: [{ key: 's24-b', tokenRows: Int32Array.of(0), outRows: Int32Array.of(0) }], hidden: new Float32Array(D), out: new Float32Array(D), D }),
    { code: 'GPU_ERROR' },
    'a non-resident expert is an error',
  )
  await t.rejects(
    gpu.runLayer({ experts: [{ key: 's24-a', tokenRows: Int32Array.of(5), outRows: Int32Array.of(0) }], hidden: new Float32Array(D), out: new Float32Array(D) }),
    { code: 'GPU_ERROR' },
    'a token row outside hidden is an error',
  )
  await t.rejects(
    gpu.runLayer({ experts: [{ key: 's24-a', tokenRows: Int32Array.of(5), outRows: Int32Array.of(0) }], hidden: new Float32Array(D), out: new Float32Array(D) }, { inline: true }),
    { code: 'GPU_ERROR', message: /outside/ },
    'inline: the same error, as a rejection',
  )
})

/** ‖out − ref‖/‖ref‖ over one expert's selected rows (float64 reference), and whether all were finite. */
function relError(
  expert: Parameters<typeof referenceRow>[0],
  c: { tokenRows: Int32Array; outRows: Int32Array; scale: Float32Array },
  hidden: Float32Array,
  out: Float32Array,
  D: number,
): { rel: number; finite: boolean } {
  let num = 0, den = 0, finite = true
  for (let i = 0; i < c.tokenRows.length; i++) {
    const ref = referenceRow(expert, hidden, c.tokenRows[i] * D, c.scale[i])
    for (let d = 0; d < D; d++) {
      const v = out[c.outRows[i] * D + d]
      if (!Number.isFinite(v)) finite = false
      num += (v - ref[d]) ** 2
      den += ref[d] ** 2
    }
  }
  return { rel: Math.sqrt(num / den), finite }
}

// Long K: the large-batch kernel's K loop runs several iterations (pairs of k64 steps), with odd step
// and chunk counts (D = 640: 10 steps, 5 chunks; F = 576: 9 steps, 5 chunks, the last one a single
// step), partial row blocks (F/2 = 288 and D/2 = 320 stored rows) and token counts that are not
// multiples of the 64/128/256-token tiles.
t.test('GPU layer kernel at long K matches a float64 reference', { skip }, async (t) => {
  const D = 640, F = 576
  const specs = [
    { key: 'dense-k', ffn: 'swiglu' as const, D, F, format: 'dense' as Format, dtype: 'bf16' as Dtype, seed: 21 },
    { key: 's24-k', ffn: 'swiglu' as const, D, F, format: '2:4' as Format, dtype: 'bf16' as Dtype, seed: 22 },
    { key: 's75-k', ffn: 'swiglu' as const, D, F, format: '75%' as Format, dtype: 'bf16' as Dtype, seed: 23 },
    { key: 's75-kg', ffn: 'gelu' as const, D, F, format: '75%' as Format, dtype: 'bf16' as Dtype, seed: 24 },
  ]
  const cnt = [45, 150, 70, 37]
  const { experts, id } = mappedExperts(t, specs)
  const gpu = GpuBackend.open({})
  t.teardown(() => gpu.close())
  for (const e of experts) gpu.upload(e.key, id, e.ffn, e.refs)
  const r = rng(7)
  const T = 160
  const totalSel = cnt.reduce((a, b) => a + b, 0)
  const outRowsN = totalSel + 5
  const hidden = new Float32Array(T * D)
  for (let i = 0; i < hidden.length; i++) hidden[i] = 2 * r() - 1
  const out = new Float32Array(outRowsN * D).fill(NaN)
  let next = 0
  const calls = experts.map((e, k) => ({
    key: e.key,
    tokenRows: Int32Array.from({ length: cnt[k] }, () => Math.floor(r() * T)),
    outRows: Int32Array.from({ length: cnt[k] }, () => next++),
    scale: Float32Array.from({ length: cnt[k] }, () => 0.1 + r()),
  }))
  await gpu.runLayer({ experts: calls, hidden, out })
  for (let k = 0; k < experts.length; k++) {
    const { rel, finite } = relError(experts[k], calls[k], hidden, out, D)
    t.ok(finite && rel <= 1e-2, `long K ${experts[k].key} (${specs[k].format}/${specs[k].ffn}) n=${cnt[k]}: rel err ${rel.toExponential(2)}`)
  }
  let untouched = true
  for (let row = totalSel; row < outRowsN; row++) for (let d = 0; d < D; d++) untouched &&= Number.isNaN(out[row * D + d])
  t.ok(untouched, 'long K: rows not selected stay untouched')
})

// Decode launches too small to fill the GPU split each m16 tile's K range between the warps of a CTA
// (moe_launch.cuh: kSplitFor, up to 8 warps). D = 1088 (17 k64 steps, 9 chunks) and F = 1216 (19
// steps, 10 chunks): 8 warps get slices of 1 or 2 chunks, and the last chunk is a single step. Each
// round runs on a backend with the split (the default) and one without (HETMOE_MMA_KSPLIT=1): both
// within bf16 tolerance of float64, and the split gives the same bits every run (warp 0 adds the
// others' sums in warp order).
t.test('GPU decode kernel with K split across warps matches a float64 reference', { skip }, async (t) => {
  const D = 1088, F = 1216
  const specs = [
    { key: 'dense-s', ffn: 'swiglu' as const, D, F, format: 'dense' as Format, dtype: 'bf16' as Dtype, seed: 31 },
    { key: 'dense-g', ffn: 'gelu' as const, D, F, format: 'dense' as Format, dtype: 'bf16' as Dtype, seed: 32 },
    { key: 's24-s', ffn: 'swiglu' as const, D, F, format: '2:4' as Format, dtype: 'bf16' as Dtype, seed: 33 },
    { key: 's75-s', ffn: 'swiglu' as const, D, F, format: '75%' as Format, dtype: 'bf16' as Dtype, seed: 34 },
    { key: 's75-g', ffn: 'gelu' as const, D, F, format: '75%' as Format, dtype: 'bf16' as Dtype, seed: 35 },
  ]
  const { experts, id } = mappedExperts(t, specs)
  const split = GpuBackend.open({})
  t.teardown(() => split.close())
  const before = process.env.HETMOE_MMA_KSPLIT
  process.env.HETMOE_MMA_KSPLIT = '1' // read when a backend opens
  const whole = GpuBackend.open({})
  if (before === undefined) delete process.env.HETMOE_MMA_KSPLIT
  else process.env.HETMOE_MMA_KSPLIT = before
  t.teardown(() => whole.close())
  for (const gpu of [split, whole]) for (const e of experts) gpu.upload(e.key, id, e.ffn, e.refs)
  const r = rng(8)
  const T = 24
  const hidden = new Float32Array(T * D)
  for (let i = 0; i < hidden.length; i++) hidden[i] = 2 * r() - 1
  for (const cnt of [[1, 0, 0, 0, 0], [1, 1, 1, 1, 1], [3, 9, 0, 16, 2], [16, 1, 5, 0, 11]]) {
    let next = 0
    const calls = experts.map((e, k) => ({
      key: e.key,
      tokenRows: Int32Array.from({ length: cnt[k] }, () => Math.floor(r() * T)),
      outRows: Int32Array.from({ length: cnt[k] }, () => next++),
      scale: Float32Array.from({ length: cnt[k] }, () => 0.1 + r()),
    }))
    const outs: Float32Array[] = []
    for (const gpu of [split, whole, split]) {
      const out = new Float32Array((next + 3) * D).fill(NaN)
      await gpu.runLayer({ experts: calls, hidden, out }, { inline: true })
      outs.push(out)
    }
    for (const [o, out] of outs.slice(0, 2).entries()) {
      for (let k = 0; k < experts.length; k++) {
        const c = calls[k]
        if (c.tokenRows.length === 0) continue
        const { rel, finite } = relError(experts[k], c, hidden, out, D)
        t.ok(finite && rel <= 1e-2, `[${cnt}] ${o === 0 ? 'K split' : 'one warp a tile'} ${experts[k].key} n=${c.tokenRows.length}: rel err ${rel.toExponential(2)}`)
      }
      let untouched = true
      for (let i = next * D; i < out.length; i++) untouched &&= Number.isNaN(out[i])
      t.ok(untouched, `[${cnt}] rows not selected stay untouched`)
    }
    const bits = (a: Float32Array) => new Uint32Array(a.buffer)
    t.ok(bits(outs[0]).every((b, i) => b === bits(outs[2])[i]), `[${cnt}] the K split gives the same bits twice`)
  }
})

t.test('GPU cache budget: a full cache is GPU_OOM', { skip }, async (t) => {
  const { experts: [e], id } = mappedExperts(t, [{ key: 'x', ffn: 'swiglu', D: 128, F: 128, format: '2:4', dtype: 'bf16', seed: 3 }])
  const gpu = GpuBackend.open({ budgetBytes: 40000 })
  t.teardown(() => gpu.close())
  t.throws(() => gpu.upload('x', id, 'swiglu', e.refs), (err: unknown) => err instanceof HetmoeError && err.code === 'GPU_OOM')
  t.equal(gpu.bytesUsed, 0, 'a failed upload leaves nothing behind')
})

t.test('GPU backend reports why it is unavailable', async (t) => {
  const a = GpuBackend.available()
  t.type(a.available, 'boolean')
  if (!a.available) t.type(a.reason, 'string')
})
