import t from 'tap'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createRuntime } from '../runtime/runtime.js'
import { loadModel } from '../experts/model.js'
import { synthModel, PRESETS } from '../experts/synth.js'
import { runTokenStream, WARMUP } from '../runtime/stream-runner.js'
import { zipfTokens } from '../runtime/token-stream.js'

const root = mkdtempSync(join(tmpdir(), 'hetmoe-stream-'))
t.teardown(() => rmSync(root, { recursive: true, force: true }))

t.test('warm-up: repeats of the first batch, until steady by default, and the timed batches see their own inputs', async (t) => {
  const out = join(root, 'tiny')
  await synthModel({ preset: PRESETS.tiny, out, overwrite: true })
  const m = await loadModel(out)
  t.teardown(() => m.close())
  const rt = await createRuntime({ model: m, gpu: 'off' })
  t.teardown(() => rt.close())
  const tokens = zipfTokens(24, m.manifest.vocabSize, 1.1, 5)
  const first = (warmup: number | 'auto') => {
    let layer0: Float32Array | undefined
    return runTokenStream(rt, { tokens, batch: 8, domain: 0, warmup, onFirst: (_h, o) => (layer0 = o) }).then((r) => ({ r, layer0: layer0! }))
  }
  const none = await first(0)
  t.equal(none.r.warmupBatches, 0)
  const three = await first(3)
  t.equal(three.r.warmupBatches, 3)
  t.equal(three.r.batches, 3, 'warm-up batches are not counted in the timed ones')
  const auto = await first('auto')
  t.ok(auto.r.warmupBatches > 1 && auto.r.warmupBatches <= WARMUP.maxBatches, `auto: ${auto.r.warmupBatches} batches`)
  t.same(auto.layer0, none.layer0, "the first timed batch's output is the same after a warm-up: its inputs are its own")
  t.same(three.layer0, none.layer0)
  const seconds = WARMUP.seconds
  WARMUP.seconds = 0
  t.teardown(() => void (WARMUP.seconds = seconds))
  t.equal((await first('auto')).r.warmupBatches, 1, 'a batch longer than the warm-up time is warm-up enough')
})
