// CPU-only forwards of the small model (1024 x 2816, 4 layers) at T tokens: tokens/s, for A/B of two builds.
const root = process.argv[2]
const { createRuntime } = await import(`${root}/dist/runtime/runtime.js`)
const { loadModel } = await import(`${root}/dist/experts/model.js`)
const { randomHidden, uniformTokens } = await import(`${root}/dist/runtime/token-stream.js`)
const m = await loadModel(process.env.MODEL)
const rt = await createRuntime({ model: m, gpu: 'off' })
const D = m.manifest.hiddenSize
for (const T of [1, 16, 64]) {
  const h = rt.arena.lease(T * D * 4), o = rt.arena.lease(T * D * 4)
  h.f32(T * D).set(randomHidden(T, D, 3))
  const ids = uniformTokens(T, 32000, 5)
  const ts = []
  for (let i = 0; i < 60; i++) {
    const t0 = performance.now()
    for (let l = 0; l < 4; l++) await rt.forward(l, h.f32(T * D), { tokenIds: ids, domain: 0, out: o.f32(T * D) })
    if (i >= 10) ts.push(performance.now() - t0)
  }
  ts.sort((a, b) => a - b)
  console.log(root.split('/').pop(), 'T', T, 'median ms/batch', ts[ts.length >> 1].toFixed(3))
  h.release(); o.release()
}
await rt.close(); m.close()
