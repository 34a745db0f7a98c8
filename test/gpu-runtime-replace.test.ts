// Re-placement on a real GPU: a runtime planned for one RRE domain gets traffic from the other and
// moves its GPU experts there through the device's background uploads, every output checked against a
// CPU-only runtime meanwhile. Skips cleanly where no GPU (or no CUDA build) exists, as on CI.
import t from 'tap'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createRuntime } from '../runtime/runtime.js'
import type { ReplaceEvent } from '../runtime/replacement.js'
import { loadModel } from '../experts/model.js'
import { synthModel, PRESETS } from '../experts/synth.js'
import { relativeError } from '../experts/formats.js'
import { randomHidden, uniformTokens } from '../runtime/token-stream.js'
import { profileFromTokens, profileShares } from '../scheduler/profile.js'
import { testCalibration } from './helpers/calibration.js'
import { gpuSkipReason } from './helpers/gpu-experts.js'

const skip = gpuSkipReason()

t.test('a domain shift moves experts on the GPU while forwards run, outputs unchanged', { skip }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'hetmoe-gpu-replace-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  await synthModel({ preset: PRESETS.tiny, out: dir, format: 'dense', seed: 5, overwrite: true })
  const m = await loadModel(dir)
  t.teardown(() => m.close())
  const V = m.manifest.vocabSize
  const hot = (d: number) => profileFromTokens(m, uniformTokens(4096, V, 99), d).layers.map((l) => l.counts.flatMap((c, e) => (c > 0 ? [e] : [])))
  const hot0 = hot(0)
  const hot1 = hot(1)
  const n = hot0.reduce((s, es) => s + es.length, 0)
  const share = profileShares(profileFromTokens(m, uniformTokens(4096, V, 98), 0)).map((s) => Array.from(s))
  const expertBytes = 3 * 64 * 128 * 2
  const rt = await createRuntime({
    model: m,
    gpu: 0,
    gpuMemory: n * (expertBytes + 4096),
    cpuThreads: 2,
    arenaBytes: 16 << 20,
    _calibration: testCalibration(),
    plan: { layers: hot0.map((gpuExperts, layer) => ({ layer, gpuExperts })), share, batchTokens: 1 },
    replace: { halfLifeTokens: 64, checkEveryTokens: 32 },
  })
  const cpu = await createRuntime({ model: m, gpu: 'off', cpuThreads: 1, arenaBytes: 16 << 20 })
  t.teardown(async () => {
    await rt.close()
    await cpu.close()
  })
  const events: ReplaceEvent[] = []
  const warnings: string[] = []
  rt.on('replace', (e: ReplaceEvent) => events.push(e))
  rt.on('warning', (w: string) => warnings.push(w))
  t.equal(rt.stats().gpu.residentExperts, n, `the plan's ${n} experts are resident`)

  let worst = 0
  let forwards = 0
  const placed = () => !rt.stats().gpu.replacing && events.length > 0 && rt.stats().gpu.expertsMovedIn >= hot1.reduce((s, es) => s + es.length, 0)
  for (const [domain, count] of [[0, 30], [1, 1500]] as const) {
    for (let i = 0; i < count && !(domain === 1 && placed()); i++) {
      await new Promise((r) => setImmediate(r))
      const T = 16
      const x = randomHidden(T, m.manifest.hiddenSize, 100 * domain + i)
      const ids = uniformTokens(T, V, 100 * domain + i)
      const outs = await Promise.all([0, 1].flatMap((layer) => [rt.forward(layer, x, { tokenIds: ids, domain }), cpu.forward(layer, x, { tokenIds: ids, domain })]))
      worst = Math.max(worst, relativeError(outs[1], outs[0]), relativeError(outs[3], outs[2]))
      forwards++
    }
  }
  const st = rt.stats().gpu
  t.ok(worst < 2e-2, `${forwards} forwards on both layers match CPU-only (worst rel err ${worst.toExponential(2)})`)
  t.ok(placed(), `${st.replacements} re-placements moved ${st.expertsMovedIn} experts in and ${st.expertsMovedOut} out`)
  for (const e of events) t.comment(`replace: ${JSON.stringify(e.moves)} in ${e.ms.toFixed(1)} ms, failed ${e.failed.length}`)
  t.ok(st.residentBytes <= n * (expertBytes + 4096), `within the budget (${st.residentBytes} bytes resident)`)
  t.ok(st.healthy && warnings.length === 0, `GPU healthy, no warnings ${warnings.join('; ')}`)
  const before = rt.stats().layers.reduce((s, l) => s + l.gpuRows, 0)
  const x = randomHidden(16, m.manifest.hiddenSize, 7)
  await rt.forward(0, x, { tokenIds: uniformTokens(16, V, 7), domain: 1 })
  t.ok(rt.stats().layers.reduce((s, l) => s + l.gpuRows, 0) > before, 'domain 1 now computes on the GPU')
})
