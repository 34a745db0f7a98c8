// Prefill-size GPU calls made on the calling thread (HETMOE_GPU_INLINE_PREFILL) on a real GPU: beside a
// CPU job the thread does not join (the wait asleep), and alone (the wait spinning), each output checked
// against the float64 reference on rows poisoned first, and equal to the same call made off-thread. The
// fake GPU of test/runtime.test.ts checks which way the runtime asks for; this checks the device's
// synchronous path gives the same numbers. Skips cleanly where no GPU (or no CUDA build) exists, as on CI.
import t from 'tap'
import { createRuntime } from '../runtime/runtime.js'
import { envConfig } from '../runtime/config.js'
import { loadModel } from '../experts/model.js'
import { PRESETS } from '../experts/synth.js'
import { layerForwardRef } from '../experts/reference.js'
import { relativeError } from '../experts/formats.js'
import { randomHidden, uniformTokens } from '../runtime/token-stream.js'
import { testCalibration } from './helpers/calibration.js'
import { gpuSkipReason } from './helpers/gpu-experts.js'
import { makeModel, tempDir } from './helpers/models.js'

const skip = gpuSkipReason()

t.test('prefill-size GPU calls on the calling thread give the reference outputs, beside CPU work and alone', { skip }, async (t) => {
  const m = await loadModel(await makeModel(tempDir(t, 'hetmoe-gpu-inline-'), PRESETS.tiny, { seed: 8, format: 'dense' }))
  t.teardown(() => m.close())
  const { vocabSize: V, hiddenSize: D } = m.manifest
  const E = m.manifest.layers[0].experts.length
  const expertBytes = 3 * 64 * 128 * 2
  const T = envConfig().gpuInlineRows + 44
  // Layer 0: two experts resident and no room to stream (the CPU keeps the rest); layer 1: all resident.
  const plan = { layers: [{ layer: 0, gpuExperts: [0, 4] }, { layer: 1, gpuExperts: Array.from({ length: E }, (_, e) => e) }] }
  const outputs: Float32Array[][] = []
  for (const inlinePrefill of [true, false]) {
    const rt = await createRuntime({ model: m, gpu: 0, gpuMemory: (E + 2) * (expertBytes + 4096), cpuThreads: 2, arenaBytes: 32 << 20, _calibration: testCalibration(), replace: false, plan, _gpuInlinePrefill: inlinePrefill })
    const warnings: string[] = []
    rt.on('warning', (w: string) => warnings.push(w))
    const got: Float32Array[] = []
    for (const [layer, seed, domain] of [[0, 31, 0], [0, 32, 1], [1, 33, 0], [1, 34, 1]] as const) {
      const x = randomHidden(T, D, seed)
      const tokenIds = uniformTokens(T, V, seed)
      const out = new Float32Array(T * D).fill(NaN) // poisoned: every row must be written
      await rt.forward(layer, x, { tokenIds, domain, out })
      const err = relativeError(layerForwardRef(m, layer, { x, tokenIds, domain }).out, out)
      t.ok(err <= 1e-2, `inline ${inlinePrefill}, layer ${layer}, ${T} tokens: relative error ${err.toExponential(2)} <= 1e-2`)
      got.push(out)
    }
    const st = rt.stats()
    t.ok(st.layers[0].cpuRows > 0 && st.layers[0].gpuRows > 0, `layer 0 ran on both sides (${st.layers[0].cpuRows} CPU, ${st.layers[0].gpuRows} GPU rows)`)
    t.equal(st.layers[1].cpuRows, 0, 'layer 1 ran on the GPU alone')
    t.ok(st.gpu.healthy && warnings.length === 0, `GPU healthy, no warnings ${warnings.join('; ')}`)
    outputs.push(got)
    await rt.close()
  }
  t.ok(outputs[0].every((o, i) => o.every((v, j) => v === outputs[1][i][j])), 'inline and off-thread calls give the same bits')
})
