// The gate GEMM shared with the CPU crew (native/cpu/gate_job.h, CpuCrew.gateLogits): the same bits
// as the single-thread native GEMM and the JavaScript router for every thread count, token count and
// ISA level; the size threshold; a busy crew declines; forwards route alike either way.
import t from 'tap'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { loadModel } from '../experts/model.js'
import { synthModel } from '../experts/synth.js'
import { createRuntime } from '../runtime/runtime.js'
import { crewOf, gateParallelMinProducts, setGateParallelMinProducts } from '../runtime/cpu-crew.js'
import { native } from '../runtime/native.js'
import { GateRouter } from '../scheduler/route-gate.js'
import type { GateRouting } from '../experts/manifest.js'
import { runCpuLayer } from '../runtime/cpu-layer-job.js'
import { buildModel, prepareJob } from './fixtures/cpu-model.js'

const D = 200 // 8⌊D/8⌋ = D; the 203-wide model below has a tail
const levels = native().cpuIsa().levels.filter((l) => l.available).map((l) => l.name)

t.test('crew gate logits: bit for bit the single-thread GEMM and the JS router, any thread count', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'hetmoe-gate-job-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  for (const [hidden, E] of [[D, 16], [203, 13]]) {
    const out = join(dir, `m${hidden}-${E}`)
    await synthModel({ preset: { name: 'g', layers: 1, hidden, inner: 32, ffn: 'swiglu', routing: { kind: 'gate', experts: E, topK: 2, normalize: true }, vocabSize: 100 }, out })
    const model = await loadModel(out)
    const W = model.gateWeight(0)
    const gate = { weightsId: model.weightsId, offset: (model.layer(0).routing as GateRouting).weight.offset }
    const router = new GateRouter({ weight: W, numExperts: E, hiddenSize: hidden, topK: 2, normalize: true })
    for (const threads of [1, 2, 3]) {
      const rt = await createRuntime({ model, gpu: 'off', cpuThreads: threads })
      const crew = crewOf(rt.arena)!
      t.ok(crew, 'the runtime registers its crew')
      for (const T of [1, 3, 4, 9, 33]) {
        const hl = rt.arena.lease(T * hidden * 4)
        const x = hl.f32(T * hidden)
        for (let i = 0; i < x.length; i++) x[i] = Math.sin(i * 0.37 + T) * (1 + (i % 7))
        const ll = rt.arena.lease(T * E * 8)
        const logits = ll.f64(T * E).fill(NaN)
        const js = router.logits(x, T, new Float64Array(T * E))
        for (const isa of ['', ...levels]) {
          if (isa) process.env.HETMOE_ISA = isa
          else delete process.env.HETMOE_ISA
          logits.fill(NaN)
          t.equal(crew.gateLogits(x, gate, T, hidden, E, logits, 0), -1)
          const single = new Float64Array(T * E)
          native().gateLogits(x, W, T, hidden, E, single)
          t.ok(logits.every((v, i) => Object.is(v, single[i]) && Object.is(v, js[i])), `threads=${threads} T=${T} D=${hidden} E=${E} ${isa || 'best ISA'}: same bits`)
        }
        delete process.env.HETMOE_ISA
        // A non-finite hidden value: its index.
        x[T * hidden - 2] = NaN
        t.equal(crew.gateLogits(x, gate, T, hidden, E, logits, 0), T * hidden - 2, 'NaN found')
        hl.release()
        ll.release()
      }
      await rt.close()
    }
    model.close()
  }
})

t.test('crew gate logits: below the threshold, off the arena, or with a layer job running, it declines', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'hetmoe-gate-job-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const E = 8
  await synthModel({ preset: { name: 'g', layers: 1, hidden: D, inner: 256, ffn: 'swiglu', routing: { kind: 'gate', experts: E, topK: 2, normalize: true }, vocabSize: 100 }, out: join(dir, 'm') })
  const model = await loadModel(join(dir, 'm'))
  t.teardown(() => model.close())
  const rt = await createRuntime({ model, gpu: 'off', cpuThreads: 2 })
  t.teardown(() => rt.close())
  const crew = crewOf(rt.arena)!
  const gate = { weightsId: model.weightsId, offset: (model.layer(0).routing as GateRouting).weight.offset }
  const T = 4
  const x = rt.arena.lease(T * D * 4).f32(T * D).fill(0.25)
  const logits = rt.arena.lease(T * E * 8).f64(T * E)
  t.equal(gateParallelMinProducts(2), 1 << 20, '2 workers: from 1M products')
  t.equal(gateParallelMinProducts(16), 1 << 18, '16 workers: from 256K products')
  t.equal(crew.gateLogits(x, gate, T, D, E, logits, T * E * D + 1), undefined, 'below the threshold: the caller computes')
  t.equal(crew.gateLogits(x, gate, T, D, E, logits, T * E * D), -1, 'at the threshold: the crew computes')
  t.equal(crew.gateLogits(new Float32Array(T * D), gate, T, D, E, logits, 0), undefined, 'hidden outside the arena')
  t.equal(crew.gateLogits(x, gate, T, D, E, new Float64Array(T * E), 0), undefined, 'logits outside the arena')
  // While a layer job holds the board, the crew declines (the board takes one job at a time). A
  // forward's joined job usually finishes inside its one native call, so the layer job here is one
  // posted to the workers alone (join: false), in flight until they are done.
  const other = buildModel({ D: 64, F: 128, ffn: 'gelu', format: 'dense', dtype: 'bf16', count: 2, seed: 1 })
  t.teardown(() => other.close())
  const p = prepareJob(rt.arena, other, { D: 64, F: 128, ffn: 'gelu', counts: [40, 40], T: 64, seed: 2, isa: 'scalar' })
  const pending = runCpuLayer(crew, rt.arena, p.job, { join: false })
  const during = crew.gateLogits(x, gate, T, D, E, logits, 0)
  await pending
  t.equal(during, undefined, 'busy crew: declined')
  t.equal(crew.gateLogits(x, gate, T, D, E, logits, 0), -1, 'free again after the job')
  // A forward's joined job finishes inside its native call: the board is free right after.
  const big = rt.arena.lease(64 * D * 4).f32(64 * D).fill(0.5)
  await rt.forward(0, big)
  t.equal(crew.gateLogits(x, gate, T, D, E, logits, 0), -1, 'free again after the forward')
})

t.test('forwards route and compute the same with the gate on the crew or on the main thread', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'hetmoe-gate-job-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  // Large enough (T·E·D = 64·64·256 = 1M products) to cross the default threshold at T = 64.
  const hidden = 256
  const E = 64
  await synthModel({ preset: { name: 'g', layers: 1, hidden, inner: 32, ffn: 'swiglu', routing: { kind: 'gate', experts: E, topK: 6, normalize: false }, vocabSize: 100 }, out: join(dir, 'm') })
  const model = await loadModel(join(dir, 'm'))
  t.teardown(() => model.close())
  const saved = gateParallelMinProducts(2)
  const T = Math.max(64, Math.ceil(saved / (E * hidden)))
  const x = Float32Array.from({ length: T * hidden }, (_, i) => Math.cos(i * 0.11))
  t.teardown(() => setGateParallelMinProducts(undefined))
  const outs: Float32Array[] = []
  for (const [threads, min] of [[1, saved], [2, saved], [2, Infinity], [3, 1]]) {
    setGateParallelMinProducts(min)
    const rt = await createRuntime({ model, gpu: 'off', cpuThreads: threads })
    outs.push(await rt.forward(0, x))
    await rt.close()
  }
  for (let i = 1; i < outs.length; i++) t.ok(Buffer.from(outs[0].buffer).equals(Buffer.from(outs[i].buffer)), `T=${T}: forward ${i} bit for bit (crew or main thread, 1-3 workers)`)
})
