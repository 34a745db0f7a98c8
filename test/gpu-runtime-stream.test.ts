// Streaming and lookahead prefetch on a real GPU: a prefill batch's cold experts are copied in beside
// the CPU and join the GPU call, and a forward's lookahead copies the next layer's ones in early; every
// output is checked against the float64 reference, the budget and the plan hold afterwards. The fake
// GPU of test/runtime.test.ts checks the ordering; this checks the device's copies and kernels give the
// same numbers. Skips cleanly where no GPU (or no CUDA build) exists, as on CI.
import t from 'tap'
import { createRuntime } from '../runtime/runtime.js'
import { loadModel } from '../experts/model.js'
import { PRESETS } from '../experts/synth.js'
import { layerForwardRef } from '../experts/reference.js'
import { relativeError } from '../experts/formats.js'
import { randomHidden, uniformTokens } from '../runtime/token-stream.js'
import { testCalibration } from './helpers/calibration.js'
import { gpuSkipReason } from './helpers/gpu-experts.js'
import { makeModel, tempDir } from './helpers/models.js'

const skip = gpuSkipReason()

t.test('streamed and prefetched experts on the GPU give the reference outputs and go after the batch', { skip }, async (t) => {
  const m = await loadModel(await makeModel(tempDir(t, 'hetmoe-gpu-stream-'), PRESETS.tiny, { seed: 6, format: 'dense' }))
  t.teardown(() => m.close())
  const { vocabSize: V, hiddenSize: D } = m.manifest
  // A slow CPU in the calibration makes every cold expert of a prefill batch worth streaming.
  const cal = testCalibration()
  const slowCpu = { ...cal, cpu: { ...cal.cpu, flopsPerS: { 'dense/bf16': 1e9 }, readBytesPerS: { 'dense/bf16': 1e9 } } }
  const expertBytes = 3 * 64 * 128 * 2
  const rt = await createRuntime({
    model: m,
    gpu: 0,
    gpuMemory: 4 * (expertBytes + 4096),
    cpuThreads: 2,
    arenaBytes: 16 << 20,
    _calibration: slowCpu,
    replace: false,
    plan: { layers: [{ layer: 0, gpuExperts: [0] }, { layer: 1, gpuExperts: [0] }] },
  })
  t.teardown(() => rt.close())
  const warnings: string[] = []
  rt.on('warning', (w: string) => warnings.push(w))

  let worst = 0
  const check = async (layer: number, T: number, seed: number, domain: number) => {
    const x = randomHidden(T, D, seed)
    const tokenIds = uniformTokens(T, V, seed)
    const out = await rt.forward(layer, x, { tokenIds, domain })
    worst = Math.max(worst, relativeError(layerForwardRef(m, layer, { x, tokenIds, domain }).out, out))
  }
  for (const [seed, domain] of [[90, 0], [91, 1], [92, 0]] as const) {
    await check(0, 200, seed, domain)
    await new Promise((r) => setTimeout(r, 50)) // the app's work between layers: the lookahead's copies land
    await check(1, 200, seed, domain)
  }
  await check(0, 4, 93, 1) // a decode batch: nothing streamed
  const st = rt.stats()
  t.ok(worst <= 1e-2, `every layer's output matches the float64 reference (worst rel err ${worst.toExponential(2)})`)
  t.ok(st.gpu.prefetches >= 3, `each batch's layer 0 prefetched for layer 1 (${st.gpu.prefetches})`)
  t.ok(st.layers[1].gpuExperts > 3, `layer 1 ran prefetched experts on the GPU (${st.layers[1].gpuExperts} expert calls)`)
  t.ok(st.layers[0].cpuRows > 0 && st.layers[0].gpuRows > st.layers[0].cpuRows, `layer 0 streamed most rows to the GPU (${st.layers[0].gpuRows} GPU, ${st.layers[0].cpuRows} CPU rows)`)
  await new Promise((r) => setTimeout(r, 50))
  t.equal(rt.stats().gpu.residentExperts, 2, 'after the batches only the plan stays resident')
  t.ok(rt.stats().gpu.residentBytes <= 4 * (expertBytes + 4096), `within the budget (${rt.stats().gpu.residentBytes} bytes)`)
  t.ok(st.gpu.healthy && warnings.length === 0, `GPU healthy, no warnings ${warnings.join('; ')}`)
})
