// The top-k combine shared with the CPU crew (CpuCrew.combine, native/cpu/gate_job.h kind 1): the same
// bits as the single-thread sum for any block split, shared experts and their scale, buffers inside or
// outside the arena; the thresholds; a busy crew declines; a worker that dies inside the job; forwards
// alike either way.
import t from 'tap'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Arena } from '../runtime/arena.js'
import { CpuCrew, combineParallelMinFloats, crewOf, setCombineParallelMinFloats } from '../runtime/cpu-crew.js'
import { combineTopK } from '../runtime/combine.js'
import { runCpuLayer } from '../runtime/cpu-layer-job.js'
import { native } from '../runtime/native.js'
import { createRuntime } from '../runtime/runtime.js'
import { loadModel } from '../experts/model.js'
import { synthModel } from '../experts/synth.js'
import { randomHidden } from '../runtime/token-stream.js'
import { buildModel, prepareJob } from './fixtures/cpu-model.js'

// Workers copy the environment when they start: the fault-injection hook must be on before the crew.
process.env.HETMOE_TEST_HOOKS = '1'
const sleepMs = (ms: number) => new Promise((r) => setTimeout(r, ms))
const sameBits = (a: Float32Array, b: Float32Array) => a.length === b.length && a.every((x, i) => Object.is(x, b[i]))
const fill = (a: Float32Array, seed: number) => {
  for (let i = 0; i < a.length; i++) a[i] = Math.sin(i * 0.731 + seed) * (1 + (i % 11))
  return a
}

t.test('crew combine: bit for bit the single-thread sum, any crew size, shared experts, any buffers', async (t) => {
  for (const threads of [1, 2, 3]) {
    const arena = new Arena({ bytes: 32 << 20 })
    const crew = new CpuCrew({ arena, threads })
    for (const [T, K, D, S] of [[2, 1, 64, 0], [7, 2, 100, 0], [33, 6, 64, 1], [20, 2, 48, 2], [5, 1, 4096, 0]]) {
      for (const inArena of [true, false]) {
        const rows = inArena ? fill(arena.lease(T * K * D * 4).f32(T * K * D), T) : fill(new Float32Array(T * K * D), T)
        const shared = S ? fill(inArena ? arena.lease(S * T * D * 4).f32(S * T * D) : new Float32Array(S * T * D), S + 1) : undefined
        const scale = S ? fill(new Float32Array(T), 3) : undefined
        const single = new Float32Array(T * D)
        native().combineRows(rows, shared ?? null, S, single, T, K, D, scale ?? null)
        const out = new Float32Array(T * D).fill(NaN)
        t.equal(crew.combine(rows, shared, S, out, T, K, D, scale, 0), true, `threads=${threads} T=${T} K=${K} D=${D} S=${S}: the crew sums`)
        t.ok(sameBits(out, single), `threads=${threads} T=${T} K=${K} D=${D} S=${S} ${inArena ? 'arena' : 'heap'}: same bits`)
      }
    }
    await crew.close()
  }
})

t.test('crew combine: thresholds, one token, a busy crew and a closed one decline', async (t) => {
  t.equal(combineParallelMinFloats(2), 1 << 22, '2 workers: from 4M floats')
  t.equal(combineParallelMinFloats(16), 1 << 20, '16 workers: from 1M floats')
  const arena = new Arena({ bytes: 16 << 20 })
  const crew = new CpuCrew({ arena, threads: 2 })
  const T = 8, K = 2, D = 64
  const rows = fill(arena.lease(T * K * D * 4).f32(T * K * D), 1)
  const out = new Float32Array(T * D)
  t.equal(crew.combine(rows, undefined, 0, out, T, K, D, undefined, T * K * D + 1), false, 'below the threshold: the caller sums')
  t.equal(crew.combine(rows, undefined, 0, out, T, K, D, undefined, T * K * D), true, 'at the threshold: the crew sums')
  t.equal(crew.combine(rows, undefined, 0, out, 1, K, D, undefined, 0), false, 'one token: nothing to split')
  // While a layer job holds the board (posted to the workers alone, in flight), the crew declines.
  const other = buildModel({ D: 64, F: 128, ffn: 'gelu', format: 'dense', dtype: 'bf16', count: 2, seed: 1 })
  t.teardown(() => other.close())
  const p = prepareJob(arena, other, { D: 64, F: 128, ffn: 'gelu', counts: [40, 40], T: 64, seed: 2, isa: 'scalar' })
  const pending = runCpuLayer(crew, arena, p.job, { join: false })
  const during = crew.combine(rows, undefined, 0, out, T, K, D, undefined, 0)
  await pending
  t.equal(during, false, 'busy crew: declined')
  t.equal(crew.combine(rows, undefined, 0, out, T, K, D, undefined, 0), true, 'free again after the job')
  await crew.close()
  t.equal(crew.combine(rows, undefined, 0, out, T, K, D, undefined, 0), false, 'closed: declined')
  // combineTopK sums on the calling thread when the crew declines: the same numbers either way.
  const single = new Float32Array(T * D)
  combineTopK(rows, undefined, 0, single, T, K, D, undefined, crew)
  const ref = new Float32Array(T * D)
  native().combineRows(rows, null, 0, ref, T, K, D, null)
  t.ok(sameBits(single, ref), 'combineTopK with a closed crew: the single thread')
})

t.test('a worker dying inside a combine: the call returns false, the caller sums, the crew goes on', async (t) => {
  const arena = new Arena({ bytes: 64 << 20 })
  const crew = new CpuCrew({ arena, threads: 2 })
  t.teardown(() => crew.close())
  // 512 tokens of K=4 × 2048 (4M floats): large enough that the post wakes sleeping workers, so they
  // claim blocks while this thread runs its first.
  const T = 512, K = 4, D = 2048
  const rows = fill(arena.lease(T * K * D * 4).f32(T * K * D), 5)
  const ref = new Float32Array(T * D)
  native().combineRows(rows, null, 0, ref, T, K, D, null)
  const out = new Float32Array(T * D)
  t.equal(crew.combine(rows, undefined, 0, out, T, K, D, undefined, 0), true)
  for (let i = 0; i < 2000 && crew.stats().started < 2; i++) await sleepMs(10)
  let died = 0
  for (let attempt = 0; attempt < 20 && !died; attempt++) {
    const t0 = performance.now()
    const done = crew.combine(rows, undefined, 0, out, T, K, D, undefined, 0, 1)
    const ms = performance.now() - t0
    if (!done) {
      died++
      t.ok(ms < 5000, `returned after ${ms.toFixed(0)} ms`)
    }
  }
  t.equal(died, 1, 'a worker died inside a combine, and the call returned')
  await sleepMs(50) // the death reaches the crew on this event loop; a replacement starts
  out.fill(NaN)
  t.equal(crew.combine(rows, undefined, 0, out, T, K, D, undefined, 0), true, 'the crew sums again')
  t.ok(sameBits(out, ref), 'same bits')
})

t.test('forwards give the same bits with the combine and the row copies on the crew or on the calling thread', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'hetmoe-combine-job-'))
  t.teardown(() => {
    setCombineParallelMinFloats(undefined)
    rmSync(dir, { recursive: true, force: true })
  })
  const D = 256
  for (const routing of [{ kind: 'gate', experts: 8, topK: 2, normalize: true }, { kind: 'rre', domains: 2, expertsPerDomain: 4 }] as const) {
    const out = join(dir, routing.kind)
    await synthModel({ preset: { name: 'c', layers: 1, hidden: D, inner: 64, ffn: 'swiglu', routing, vocabSize: 100 }, out })
    const model = await loadModel(out)
    const T = 48
    const x = randomHidden(T, D, 4)
    const ids = Int32Array.from({ length: T }, (_, i) => (i * 37) % 100)
    const outs: Float32Array[] = []
    for (const [threads, min] of [[2, Infinity], [2, 1], [3, 1]]) {
      setCombineParallelMinFloats(min)
      const rt = await createRuntime({ model, gpu: 'off', cpuThreads: threads })
      const crew = crewOf(rt.arena)!
      // Counts the sums the crew took: the hidden states' copy in, and the top-2 combine or the copy out.
      const combine = crew.combine.bind(crew)
      let shared = 0
      crew.combine = (...a: Parameters<CpuCrew['combine']>) => {
        const done = combine(...a)
        if (done) shared++
        return done
      }
      outs.push(await rt.forward(0, x, { tokenIds: ids, domain: 0 }))
      t.equal(shared, min === 1 ? 2 : 0, `${routing.kind}, ${threads} workers, threshold ${min}: ${shared} sums on the crew`)
      await rt.close()
    }
    for (let i = 1; i < outs.length; i++) t.ok(sameBits(outs[0], outs[i]), `${routing.kind}: forward ${i} bit for bit`)
    model.close()
  }
})
