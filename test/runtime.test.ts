import t, { type Test } from 'tap'
import { closeSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createRuntime, type Runtime } from '../runtime/runtime.js'
import { envConfig } from '../runtime/config.js'
import { loadModel, type Model } from '../experts/model.js'
import { synthModel, PRESETS, type SynthPreset } from '../experts/synth.js'
import { layerForwardRef } from '../experts/reference.js'
import { relativeError } from '../experts/formats.js'
import { randomHidden, uniformTokens } from '../runtime/token-stream.js'
import { FakeGpu } from './helpers/fake-gpu.js'
import { CpuBackend } from '../runtime/cpu-backend.js'
import { testCalibration } from './helpers/calibration.js'

const root = mkdtempSync(join(tmpdir(), 'hetmoe-rt-'))
t.teardown(() => rmSync(root, { recursive: true, force: true }))

const tinyGated: SynthPreset = { name: 'tiny-gated', layers: 1, hidden: 64, inner: 96, ffn: 'swiglu', routing: { kind: 'gate', experts: 6, topK: 2, normalize: true }, vocabSize: 1000 }
const tinyGelu: SynthPreset = { ...PRESETS.tiny, name: 'tiny-gelu', ffn: 'gelu' }

async function model(preset: SynthPreset, format: 'dense' | '2:4' | '75%' = 'dense', seed = 3): Promise<Model> {
  const out = join(root, `${preset.name}-${format.replace(/[:%]/g, '_')}-${seed}`)
  await synthModel({ preset, out, format, seed, overwrite: true })
  return loadModel(out)
}

async function checkLayer(t: Test, rt: Runtime, m: Model, layer: number, T: number, seed: number, tol = 1e-2) {
  const D = m.manifest.hiddenSize
  const x = randomHidden(T, D, seed)
  const ids = uniformTokens(T, m.manifest.vocabSize, seed)
  const out = await rt.forward(layer, x, { tokenIds: ids, domain: seed % 2 })
  const ref = layerForwardRef(m, layer, { x, tokenIds: ids, domain: seed % 2 }).out
  const err = relativeError(ref, out)
  t.ok(err <= tol, `layer ${layer}, T=${T}: relative error ${err.toExponential(2)} <= ${tol}`)
  return out
}

t.test('CPU-only forward matches the float64 reference: every format, SwiGLU, GeLU, top-2 gate', async (t) => {
  for (const [preset, format] of [[PRESETS.tiny, 'dense'], [PRESETS.tiny, '2:4'], [PRESETS.tiny, '75%'], [tinyGelu, 'dense'], [tinyGated, 'dense'], [tinyGated, '2:4']] as const) {
    const m = await model(preset, format)
    const rt = await createRuntime({ model: m, gpu: 'off', cpuThreads: 2, arenaBytes: 8 << 20 })
    const idle = rt.stats().arena.leasedBytes // the CPU crew's board
    for (const T of [1, 5, 37]) for (let l = 0; l < m.manifest.layers.length; l++) await checkLayer(t, rt, m, l, T, T + l)
    t.equal(rt.stats().arena.leasedBytes, idle, `${preset.name}/${format}: every lease released`)
    await rt.close()
    m.close()
  }
})

t.test('hybrid: GPU and CPU experts of a layer agree with CPU-only, and the GPU share is counted', async (t) => {
  const m = await model(PRESETS.tiny)
  const resident = new Map([[0, [0, 2, 5]], [1, [1, 6]]])
  const gpu = new FakeGpu(m, resident)
  const hybrid = await createRuntime({ model: m, cpuThreads: 2, arenaBytes: 8 << 20, _gpuBackend: gpu })
  gpu.arena = hybrid.arena
  const cpuOnly = await createRuntime({ model: m, gpu: 'off', cpuThreads: 1, arenaBytes: 8 << 20 })
  for (const T of [3, 64]) {
    const x = randomHidden(T, 64, T)
    const ids = uniformTokens(T, 32000, T)
    const a = await hybrid.forward(0, x, { tokenIds: ids, domain: 1 })
    const b = await cpuOnly.forward(0, x, { tokenIds: ids, domain: 1 })
    t.ok(relativeError(b, a) < 1e-2, 'hybrid ≈ CPU-only')
  }
  const s = hybrid.stats()
  t.ok(s.layers[0].gpuRows > 0 && s.layers[0].cpuRows > 0, 'both devices did work')
  t.equal(s.layers[0].gpuRows, gpu.rowsComputed)
  await hybrid.close()
  await cpuOnly.close()
  m.close()
})

t.test('GPU calls run inline only when they are decode-sized and have no CPU work beside them', async (t) => {
  const m = await model(PRESETS.tiny)
  const all = [0, 1, 2, 3, 4, 5, 6, 7]
  const gpu = new FakeGpu(m, new Map([[0, all], [1, [0, 4]]]))
  const rt = await createRuntime({ model: m, cpuThreads: 2, arenaBytes: 64 << 20, _gpuBackend: gpu })
  gpu.arena = rt.arena
  const D = m.manifest.hiddenSize
  const run = async (layer: number, T: number) => {
    gpu.inlineLog = []
    await rt.forward(layer, randomHidden(T, D, T), { tokenIds: uniformTokens(T, 32000, T), domain: 1 })
    return gpu.inlineLog
  }
  const GPU_INLINE_MAX_ROWS = envConfig().gpuInlineRows
  t.same(await run(0, 3), [true], 'every expert on the GPU, 3 rows: inline')
  t.same(await run(0, GPU_INLINE_MAX_ROWS), [true], `${GPU_INLINE_MAX_ROWS} rows: inline`)
  t.same(await run(0, GPU_INLINE_MAX_ROWS + 1), [false], 'one row more: on a libuv thread')
  t.same(await run(1, 64), [false], 'CPU experts in the same layer: the GPU call overlaps them')
  t.ok(rt.stats().layers[1].cpuRows > 0 && rt.stats().layers[1].gpuRows > 0, 'that layer had work on both sides')
  await rt.close()
  m.close()
})

t.test('beside each other at prefill sizes the CPU job runs on the workers alone and the GPU waits asleep; at decode sizes not', async (t) => {
  const m = await model(PRESETS.tiny)
  const gpu = new FakeGpu(m, new Map([[0, [0, 4]]]))
  gpu.budgetBytes = 2 * gpu.expertBytes // no room to stream cold experts: the CPU keeps its share
  const rt = await createRuntime({ model: m, cpuThreads: 2, arenaBytes: 64 << 20, _gpuBackend: gpu, replace: false })
  gpu.arena = rt.arena
  // What the runtime asks of the CPU side: the `join` it passes (undefined: the crew's own rule).
  const joins: (boolean | undefined)[] = []
  const proto = CpuBackend.prototype
  const run = proto.run
  proto.run = function (this: CpuBackend, work, signal, join) {
    joins.push(join)
    return run.call(this, work, signal, join)
  }
  t.teardown(() => void (proto.run = run))
  const D = m.manifest.hiddenSize
  const forward = async (T: number) => {
    joins.length = 0
    gpu.sleepLog = []
    await checkLayer(t, rt, m, 0, T, T)
    return { join: joins[0], sleep: gpu.sleepLog[0] }
  }
  const big = envConfig().gpuInlineRows + 1
  t.same(await forward(16), { join: undefined, sleep: false }, 'decode size: the calling thread joins, the wait spins')
  t.same(await forward(big), { join: false, sleep: true }, `${big} tokens: the workers alone, the wait asleep`)
  t.ok(rt.stats().layers[0].cpuRows > 0 && rt.stats().layers[0].gpuRows > 0, 'both sides had work')
  await rt.close()
  m.close()
})

t.test('with HETMOE_GPU_INLINE_PREFILL a prefill-size GPU call runs on the calling thread, after the CPU job it does not join is posted', async (t) => {
  const m = await model(PRESETS.tiny)
  const big = envConfig().gpuInlineRows + 1
  // What each side is asked, in order: the CPU's `join`, the GPU's `inline` and `sleep`.
  const log: string[] = []
  const proto = CpuBackend.prototype
  const run = proto.run
  proto.run = function (this: CpuBackend, work, signal, join) {
    log.push(`cpu join=${join}`)
    return run.call(this, work, signal, join)
  }
  t.teardown(() => void (proto.run = run))
  for (const inlinePrefill of [false, true]) {
    const gpu = new FakeGpu(m, new Map([[0, [0, 4]]]))
    gpu.budgetBytes = 2 * gpu.expertBytes // no room to stream cold experts: the CPU keeps its share
    const gpuRun = gpu.run.bind(gpu)
    gpu.run = (work, signal, options = {}) => (log.push(`gpu inline=${options.inline === true} sleep=${options.sleep === true}`), gpuRun(work, signal, options))
    const rt = await createRuntime({ model: m, cpuThreads: 2, arenaBytes: 64 << 20, _gpuBackend: gpu, replace: false, _gpuInlinePrefill: inlinePrefill })
    gpu.arena = rt.arena
    const forward = async (T: number, layer = 0) => {
      log.length = 0
      await checkLayer(t, rt, m, layer, T, T)
      return [...log]
    }
    if (inlinePrefill) {
      t.same(await forward(big), ['cpu join=false', 'gpu inline=true sleep=true'], `${big} tokens: the CPU job is posted first, then this thread makes the GPU call and sleeps until the device is done`)
      t.same(await forward(16), ['gpu inline=false sleep=false', 'cpu join=undefined'], 'decode size: unchanged (the calling thread joins the CPU job)')
      // Two forwards in flight: the second (started while the first waits for its CPU job) hands its call over.
      log.length = 0
      const D = m.manifest.hiddenSize
      const both = [51, 52].map((seed) => rt.forward(0, randomHidden(big, D, seed), { tokenIds: uniformTokens(big, m.manifest.vocabSize, seed), domain: 0 }))
      await Promise.all(both)
      t.same(log.filter((l) => l.startsWith('gpu')), ['gpu inline=true sleep=true', 'gpu inline=false sleep=true'], 'the first forward inline, the one beside it off-thread')
    } else {
      t.same(await forward(big), ['gpu inline=false sleep=true', 'cpu join=false'], `${big} tokens, by default: the GPU call goes to a libuv thread first`)
    }
    await rt.close()
  }
  // A layer whose experts are all resident: no CPU work beside the call.
  for (const inlinePrefill of [false, true]) {
    const gpu = new FakeGpu(m, new Map([[0, Array.from({ length: m.manifest.layers[0].experts.length }, (_, e) => e)]]))
    const rt = await createRuntime({ model: m, cpuThreads: 2, arenaBytes: 64 << 20, _gpuBackend: gpu, replace: false, _gpuInlinePrefill: inlinePrefill })
    gpu.arena = rt.arena
    gpu.inlineLog = []
    await checkLayer(t, rt, m, 0, big, big)
    await checkLayer(t, rt, m, 0, 16, 16)
    t.same(gpu.inlineLog, [inlinePrefill, true], `all on the GPU, inline prefill ${inlinePrefill ? 'on' : 'off'}: ${big} tokens ${inlinePrefill ? 'inline' : 'off-thread'}, 16 tokens inline`)
    await rt.close()
  }
  m.close()
})

t.test('arena views as hidden and out are used in place, and give the same results', async (t) => {
  for (const preset of [PRESETS.tiny, tinyGated]) {
    const m = await model(preset)
    const gpu = new FakeGpu(m, new Map([[0, [0, 2, 5]]]))
    const rt = await createRuntime({ model: m, cpuThreads: 2, arenaBytes: 8 << 20, _gpuBackend: gpu })
    gpu.arena = rt.arena
    const idle = rt.stats().arena.leasedBytes
    const T = 40
    const D = m.manifest.hiddenSize
    const x = randomHidden(T, D, 7)
    const ids = uniformTokens(T, m.manifest.vocabSize, 7)
    const want = await rt.forward(0, x, { tokenIds: ids, domain: 1 })
    const h = rt.arena.lease(T * D * 4)
    const o = rt.arena.lease(T * D * 4)
    h.f32(T * D).set(x)
    o.f32(T * D).fill(NaN) // poisoned: every row must be written
    const during = rt.stats().arena.leasedBytes
    const got = await rt.forward(0, h.f32(T * D), { tokenIds: ids, domain: 1, out: o.f32(T * D) })
    t.equal(got.buffer, rt.arena.buffer, `${preset.name}: the output is the caller's view`)
    t.equal(gpu.lastWork!.hidden.offset, h.offset, `${preset.name}: experts read the caller's hidden rows`)
    if (preset.routing.kind === 'rre') t.equal(gpu.lastWork!.out.offset, o.offset, 'top-1: experts write the caller\'s rows')
    else t.not(gpu.lastWork!.out.offset, o.offset, 'top-2: experts write rows that are combined into the caller\'s')
    t.same(Array.from(got), Array.from(want), `${preset.name}: same numbers as plain arrays`)
    t.same(Array.from(h.f32(T * D)), Array.from(x), `${preset.name}: hidden untouched`)
    // In place over the hidden states: the runtime must not let experts overwrite rows others still read.
    const inPlace = await rt.forward(0, h.f32(T * D), { tokenIds: ids, domain: 1, out: h.f32(T * D) })
    t.same(Array.from(inPlace), Array.from(want), `${preset.name}: out aliasing hidden is still right`)
    t.equal(rt.stats().arena.leasedBytes, during, 'forwards released their own leases')
    h.release()
    o.release()
    t.equal(rt.stats().arena.leasedBytes, idle)
    await rt.close()
    m.close()
  }
})

t.test('a failing GPU: its experts rerun on the CPU with a warning, then the GPU is marked unhealthy', async (t) => {
  const m = await model(PRESETS.tiny)
  const gpu = new FakeGpu(m, new Map([[0, [0, 1, 2, 3, 4, 5, 6, 7]]]))
  const rt = await createRuntime({ model: m, cpuThreads: 2, arenaBytes: 8 << 20, _gpuBackend: gpu })
  gpu.arena = rt.arena
  const warnings: string[] = []
  rt.on('warning', (w: string) => warnings.push(w))
  gpu.failNext = 1
  gpu.failCode = 'GPU_OOM'
  await checkLayer(t, rt, m, 0, 16, 1)
  t.match(warnings[0], /GPU experts of layer 0 failed .*GPU_OOM.*rerunning them on the CPU/)
  t.equal(rt.stats().gpu.healthy, true, 'one failure does not condemn the GPU')
  gpu.failNext = 3
  gpu.failCode = 'GPU_ERROR'
  for (let i = 0; i < 3; i++) await checkLayer(t, rt, m, 0, 8, 10 + i)
  t.equal(rt.stats().gpu.healthy, false)
  t.match(warnings.at(-1), /GPU marked unhealthy after 3 failures/)
  const runs = gpu.runs
  await checkLayer(t, rt, m, 0, 8, 20)
  t.equal(gpu.runs, runs, 'an unhealthy GPU gets no more work')
  await rt.close()
  m.close()
})

t.test('concurrent forwards do not corrupt each other', async (t) => {
  const m = await model(PRESETS.tiny, '2:4')
  const rt = await createRuntime({ model: m, gpu: 'off', cpuThreads: 2, arenaBytes: 8 << 20 })
  const idle = rt.stats().arena.leasedBytes // the CPU crew's board
  const inputs = Array.from({ length: 12 }, (_, i) => ({ x: randomHidden(1 + i * 3, 64, 100 + i), ids: uniformTokens(1 + i * 3, 32000, 100 + i), layer: i % 2, domain: i % 2 }))
  const sequential: Float32Array[] = []
  for (const inp of inputs) sequential.push(await rt.forward(inp.layer, inp.x, { tokenIds: inp.ids, domain: inp.domain }))
  const parallel = await Promise.all(inputs.map((inp) => rt.forward(inp.layer, inp.x, { tokenIds: inp.ids, domain: inp.domain })))
  parallel.forEach((p, i) => t.same(Array.from(p), Array.from(sequential[i]), `forward ${i}: identical to its sequential run`))
  t.equal(rt.stats().arena.leasedBytes, idle)
  await rt.close()
  m.close()
})

t.test('abort, bad inputs and bad options: clear errors, nothing leaked', async (t) => {
  const m = await model(PRESETS.tiny)
  const rt = await createRuntime({ model: m, gpu: 'off', cpuThreads: 1, arenaBytes: 8 << 20 })
  const idle = rt.stats().arena.leasedBytes // the CPU crew's board
  const x = randomHidden(4, 64, 1)
  const ids = uniformTokens(4, 32000, 1)
  const ac = new AbortController()
  ac.abort(new Error('user pressed stop'))
  await t.rejects(rt.forward(0, x, { tokenIds: ids, domain: 0, signal: ac.signal }), { code: 'ABORTED', message: /user pressed stop/ })
  await t.rejects(rt.forward(2, x, { tokenIds: ids, domain: 0 }), { code: 'BAD_INPUT', message: /layer must be an integer in \[0, 2\)/ })
  await t.rejects(rt.forward(0, x.subarray(1), { tokenIds: ids, domain: 0 }), { code: 'BAD_INPUT', message: /not a positive multiple of the model's hidden size 64/ })
  const nan = x.slice()
  nan[70] = NaN
  await t.rejects(rt.forward(0, nan, { tokenIds: ids, domain: 0 }), { code: 'BAD_INPUT', message: /NaN|finite/ })
  await t.rejects(rt.forward(0, x, { tokenIds: Int32Array.from([1, 2, 32000, 3]), domain: 0 }), { code: 'BAD_INPUT', message: /32000/ })
  await t.rejects(rt.forward(0, x, { tokenIds: ids, domain: 'klingon' }), { code: 'BAD_INPUT', message: /klingon/ })
  t.equal(rt.stats().arena.leasedBytes, idle, 'failed forwards released their leases')
  await checkLayer(t, rt, m, 0, 4, 2)
  await rt.close()
  await t.rejects(rt.forward(0, x, { tokenIds: ids, domain: 0 }), /closed/)
  await t.rejects(createRuntime({ model: m, cpuThreads: 0 }), /options\.cpuThreads must be a positive integer/)
  await t.rejects(createRuntime({ model: m, gpu: 'yes' as never }), /options\.gpu must be 'auto', 'off' or a device index/)
  await t.rejects(createRuntime({ model: m, plan: { layers: [{ layer: 0, gpuExperts: [99] }] } }), /options\.plan must be expert ids of layer 0 in \[0, 8\)/)
  m.close()
})

t.test('gated routing: a NaN hidden value is named by row and column; a damaged gate weight is a model error', async (t) => {
  const m = await model(tinyGated)
  const rt = await createRuntime({ model: m, gpu: 'off', cpuThreads: 1 })
  const x = randomHidden(3, 64, 5)
  x[64 + 9] = -Infinity
  await t.rejects(rt.forward(0, x, {}), { code: 'BAD_INPUT', message: /row 1 \(column 9\) is -Infinity/ })
  await rt.close()
  const routing = m.manifest.layers[0].routing
  if (routing.kind !== 'gate') throw new Error('tinyGated is gate-routed')
  const dir = join(m.weightsPath, '..')
  m.close()
  // One gate weight set to NaN in weights.bin (a file damaged after import).
  const fd = openSync(join(dir, 'weights.bin'), 'r+')
  writeSync(fd, new Uint8Array(Float32Array.of(NaN).buffer), 0, 4, routing.weight.offset + 4 * 70)
  closeSync(fd)
  const damaged = await loadModel(dir)
  const rt2 = await createRuntime({ model: damaged, gpu: 'off', cpuThreads: 1 })
  await t.rejects(rt2.forward(0, randomHidden(3, 64, 6), {}), { code: 'BAD_MODEL', message: /layer 0's gate weights hold a NaN/ })
  await rt2.close()
  damaged.close()
})

/** A hybrid runtime on the fake GPU whose copies take `delay` ms, expert 0 of each layer resident, room
 *  for two streamed experts beside them (domain 0's other two cold ones stay on the CPU), and a CPU slow
 *  enough (1 GFLOP/s) in the cost model that a cold expert with a few dozen tokens is worth streaming. */
async function streamingRuntime(m: Model, delay: number): Promise<{ gpu: FakeGpu; rt: Runtime }> {
  const cal = testCalibration()
  const slowCpu = { ...cal, cpu: { ...cal.cpu, flopsPerS: { 'dense/bf16': 1e9 }, readBytesPerS: { 'dense/bf16': 1e9 } } }
  const gpu = new FakeGpu(m, new Map([[0, [0]], [1, [0]]]))
  gpu.budgetBytes = 4 * gpu.expertBytes
  gpu.uploadDelayMs = delay
  const rt = await createRuntime({ model: m, cpuThreads: 2, arenaBytes: 8 << 20, _gpuBackend: gpu, _calibration: slowCpu, replace: false, plan: { layers: [{ layer: 0, gpuExperts: [0] }, { layer: 1, gpuExperts: [0] }] } })
  gpu.arena = rt.arena
  return { gpu, rt }
}

t.test('hetmoe streaming: cold experts are copied in while the CPU works on the rest, join the GPU call, and go after the batch', async (t) => {
  const m = await model(PRESETS.tiny)
  const delay = 60
  const make = () => streamingRuntime(m, delay)
  {
    const { gpu, rt } = await make()
    await checkLayer(t, rt, m, 0, 200, 70) // domain 0: ~50 tokens for each of its 4 experts
    const st = rt.stats().layers[0]
    const streamed = gpu.uploadLog.filter((x) => x.startsWith('+0/'))
    t.ok(streamed.length > 0, `cold experts streamed in (${streamed.join(' ')})`)
    t.same(gpu.resident().get(0), [0], 'and dropped after the batch: only the plan stays')
    t.ok(st.cpuRows > 0 && st.gpuRows > 0, 'both sides computed rows')
    t.ok(st.ms.gpuPlace < delay / 2, `choosing did not wait for the copies (${st.ms.gpuPlace.toFixed(1)} ms)`)
    t.ok(st.ms.gpu >= delay * 0.9, `the GPU side waited for them (${st.ms.gpu.toFixed(1)} ms)`)
    t.ok(st.ms.cpu < st.ms.gpu, `the CPU side ran beside the copies (${st.ms.cpu.toFixed(1)} ms < ${st.ms.gpu.toFixed(1)} ms)`)
    t.equal(rt.stats().gpu.uploads, streamed.length)
    await rt.close()
  }
  {
    // A copy that fails leaves its expert to the CPU, after its share: the numbers stay right.
    const { gpu, rt } = await make()
    gpu.failUploads = 1
    await checkLayer(t, rt, m, 0, 200, 71)
    const rows = rt.stats().layers[0]
    t.equal(rows.cpuRows + rows.gpuRows, 200, 'every row computed once')
    t.same(gpu.resident().get(0), [0], 'nothing left behind')
    // Two batches at once on the same layer: one copy per expert, both batches right.
    gpu.uploadLog = []
    await Promise.all([checkLayer(t, rt, m, 0, 200, 72), checkLayer(t, rt, m, 0, 200, 72)])
    const ins = gpu.uploadLog.filter((x) => x.startsWith('+'))
    t.equal(new Set(ins).size, ins.length, `no expert copied in twice for concurrent batches (${ins.join(' ')})`)
    t.same(gpu.resident().get(0), [0])
    t.ok(gpu.maxResidentBytes <= gpu.budgetBytes, 'within the budget')
    await rt.close()
  }
  m.close()
})

t.test('lookahead (RRE): a forward starts the next layer\'s copies for its batch; a different batch drops them', async (t) => {
  const m = await model(PRESETS.tiny)
  const delay = 40
  const { gpu, rt } = await streamingRuntime(m, delay)
  await checkLayer(t, rt, m, 0, 200, 80)
  t.equal(rt.stats().gpu.prefetches, 1, 'layer 0 of the batch prefetched for layer 1')
  await new Promise((r) => setTimeout(r, 3 * delay)) // the app's work between layers: the copies land
  const landed = gpu.resident().get(1) ?? []
  t.ok(landed.length > 1, `layer 1's streamed experts are resident before it runs (${landed.join(' ')})`)
  await checkLayer(t, rt, m, 1, 200, 80) // the same batch (same ids and domain) at layer 1
  const st = rt.stats().layers[1]
  t.ok(st.ms.gpu < delay, `its GPU side did not wait for copies (${st.ms.gpu.toFixed(1)} ms)`)
  t.ok(st.gpuExperts > 1, 'and ran the prefetched experts')
  t.same(gpu.resident().get(1), [0], 'which went after the batch')
  t.equal(rt.stats().gpu.prefetches, 1, 'the last layer looks no further')

  // A different batch (the other domain) at layer 1: the prefetched experts are not its; they go.
  await checkLayer(t, rt, m, 0, 200, 82)
  await new Promise((r) => setTimeout(r, 3 * delay))
  await checkLayer(t, rt, m, 1, 200, 83)
  await new Promise((r) => setTimeout(r, 3 * delay))
  t.same(gpu.resident().get(1), [0], 'nothing left behind')
  t.ok(gpu.maxResidentBytes <= gpu.budgetBytes, 'within the budget')
  // Decode-size batches do not look ahead.
  const before = rt.stats().gpu.prefetches
  await checkLayer(t, rt, m, 0, 4, 84)
  t.equal(rt.stats().gpu.prefetches, before)
  await rt.close()
  m.close()
})

t.test('GPU strategies: LRU within the budget, Fiddler threshold, stream-at-32 drops what it streamed', async (t) => {
  const m = await model(PRESETS.tiny)
  const make = async (strategy: 'on-demand-lru' | 'fiddler-rule' | 'stream-at-32', resident: [number, number[]][], budget: number) => {
    const gpu = new FakeGpu(m, new Map(resident))
    gpu.budgetBytes = budget * gpu.expertBytes
    const rt = await createRuntime({ model: m, cpuThreads: 2, arenaBytes: 8 << 20, strategy, _gpuBackend: gpu })
    gpu.arena = rt.arena
    return { gpu, rt }
  }
  {
    const { gpu, rt } = await make('on-demand-lru', [], 3)
    for (let i = 0; i < 4; i++) await checkLayer(t, rt, m, 0, 24, 40 + i)
    t.ok(gpu.uploadLog.some((x) => x.startsWith('-')), 'LRU evicted to make room')
    t.ok(rt.stats().gpu.residentExperts <= 3, 'never more than the budget')
    t.ok(rt.stats().layers[0].gpuRows > 0)
    await rt.close()
  }
  {
    const { gpu, rt } = await make('fiddler-rule', [], 8)
    await checkLayer(t, rt, m, 0, 4, 50) // ≤ 4 tokens per expert: all on the CPU
    t.equal(gpu.uploadLog.length, 0, 'below 10 tokens per expert nothing is copied')
    await checkLayer(t, rt, m, 0, 200, 51) // ~50 tokens per expert of the domain: copied in
    t.ok(gpu.uploadLog.length > 0 && rt.stats().layers[0].gpuRows > 0)
    await rt.close()
  }
  {
    const { gpu, rt } = await make('stream-at-32', [[0, [1]]], 8)
    await checkLayer(t, rt, m, 0, 16, 60)
    t.equal(gpu.uploadLog.length, 0, 'a 16-token batch streams nothing')
    await checkLayer(t, rt, m, 0, 64, 61)
    t.ok(gpu.uploadLog.filter((x) => x.startsWith('+')).length > 0, 'a 64-token batch streams')
    t.same(gpu.resident().get(0), [1], 'and drops what it streamed afterwards')
    await rt.close()
  }
  await t.rejects(createRuntime({ model: m, strategy: 'random' as never }), /options\.strategy must be 'hetmoe', 'on-demand-lru'/)
  m.close()
})

t.test('imported checkpoints run through the runtime: Mixtral-style (top-2, renormalised) and Qwen2-MoE (gated shared expert of its own size)', async (t) => {
  const { writeCheckpoint } = await import('./helpers/safetensors-writer.js')
  const { importCheckpoint } = await import('../experts/import.js')
  for (const spec of [
    { arch: 'mixtral' as const, hidden: 64, inner: 96, experts: 4, topK: 2, layers: 2, dtype: 'BF16' as const, seed: 9 },
    { arch: 'qwen2_moe' as const, hidden: 64, inner: 32, experts: 6, topK: 3, layers: 1, dtype: 'F32' as const, shared: 96, seed: 10 },
  ]) {
    const src = join(root, `ckpt-${spec.arch}`)
    writeCheckpoint(src, spec)
    for (const format of ['dense', '2:4'] as const) {
      const out = join(root, `imported-${spec.arch}-${format === 'dense' ? 'd' : 's'}`)
      await importCheckpoint(src, { out, format, dtype: 'bf16', overwrite: true })
      const m = await loadModel(out)
      if (spec.arch === 'qwen2_moe') t.ok(m.manifest.layers[0].sharedExperts.length > 0 && m.manifest.layers[0].sharedExpertGate, 'the shared expert and its gate came through')
      const rt = await createRuntime({ model: m, gpu: 'off', cpuThreads: 2, arenaBytes: 8 << 20 })
      for (let l = 0; l < m.manifest.layers.length; l++) await checkLayer(t, rt, m, l, 9, 70 + l)
      await rt.close()
      m.close()
    }
  }
})
