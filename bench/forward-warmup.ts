// How many forward() calls a runtime takes to reach its steady speed (V8 compiles a hot function in
// tiers): one-row forwards on the CPU, timed per 1000 calls from the runtime's first. It sizes the
// warm-ups of `hetmoe run` (stream-runner.ts: WARMUP) and of the calibration's layer-call probe.
//   node dist/bench/forward-warmup.js [MODEL_DIR]      (default: a one-layer model of 16 tiny experts,
//                                                       made under the cache dir the first time)
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { loadModel } from '../experts/model.js'
import { synthModel } from '../experts/synth.js'
import { MANIFEST_FILE } from '../experts/manifest.js'
import { cacheDir } from '../runtime/model-cache.js'
import { arenaBytesFor, createRuntime } from '../runtime/runtime.js'
import { randomHidden } from '../runtime/token-stream.js'

const WINDOWS = 16
const PER_WINDOW = 1000
let dir = process.argv[2]
if (!dir) {
  dir = join(cacheDir(), 'bench-models', 'forward-warmup')
  if (!existsSync(join(dir, MANIFEST_FILE)))
    await synthModel({ preset: { name: 'forward-warmup', layers: 1, hidden: 64, inner: 128, ffn: 'swiglu', routing: { kind: 'gate', experts: 16, topK: 1, normalize: false }, vocabSize: 1000 }, out: dir, overwrite: true })
}
const model = await loadModel(dir)
const D = model.manifest.hiddenSize
const rt = await createRuntime({ model, gpu: 'off', arenaBytes: arenaBytesFor(model, 1) + 2 * D * 4, replace: false })
try {
  const h = rt.arena.lease(D * 4).f32(D)
  const o = rt.arena.lease(D * 4).f32(D)
  h.set(randomHidden(1, D, 3))
  console.log(`forward-warmup: ${dir}, one row, layer 0, on the CPU`)
  for (let w = 0; w < WINDOWS; w++) {
    const t0 = performance.now()
    for (let k = 0; k < PER_WINDOW; k++) await rt.forward(0, h, { out: o })
    console.log(`forwards ${String(w * PER_WINDOW).padStart(5)}-${String((w + 1) * PER_WINDOW - 1).padStart(5)}: ${((1e3 * (performance.now() - t0)) / PER_WINDOW).toFixed(1)} µs each`)
  }
} finally {
  await rt.close()
}
