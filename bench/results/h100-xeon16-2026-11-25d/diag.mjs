// Diagnosis of large-batch place-vs-run gaps (#6). CASE env selects a run; MICRO=1 runs micro-timings.
import { loadModel } from '../dist/experts/index.js'
import { createRuntime, arenaBytesFor } from '../dist/runtime/runtime.js'
import { readPlanFile } from '../dist/runtime/placement.js'
import { zipfTokens } from '../dist/runtime/token-stream.js'
import { runTokenStream } from '../dist/runtime/stream-runner.js'
import { measureRouteS } from '../dist/runtime/route-cost.js'
import { native } from '../dist/runtime/native.js'
import { Arena } from '../dist/runtime/arena.js'
import { readFileSync } from 'node:fs'
const model = await loadModel('/tmp/sl')
const f = (x) => +x.toFixed(3)
if (process.env.MICRO) {
  for (const T of [16, 256, 4096]) console.log('measureRouteS', T, f(measureRouteS(model, T, 0) * 1e3), 'ms')
  const a = new Arena({ bytes: 1200 << 20 })
  for (const rows of [256, 4096]) {
    const n = rows * 2048
    const k = Math.ceil((1024 << 20) / (n * 4))
    const bufs = Array.from({ length: k }, () => { const x = a.lease(n * 4).f32(n); for (let i = 0; i < n; i++) x[i] = (i % 977) * 1e-3; return x })
    const t = (x) => { const t0 = performance.now(); native().firstNonFinite(x, n); return performance.now() - t0 }
    const med = (xs) => f(xs.sort((p, q) => p - q)[xs.length >> 1])
    const warm = [], cold = [], written = []
    for (let i = 0; i < 30; i++) warm.push(t(bufs[0]))
    for (let i = 0; i < Math.min(30, k); i++) cold.push(t(bufs[1 + (i % (k - 1))]))
    for (let i = 0; i < 10; i++) { const x = bufs[1 + i]; for (let j = 0; j < n; j++) x[j] += 1e-7; written.push(t(x)) }
    console.log(`scan ${rows} rows (${(n * 4) >> 20} MiB): warm ${med(warm)} ms, rotating over ${k} buffers ${med(cold)} ms, right after a JS write ${med(written)} ms`)
    bufs.length = 0
  }
  process.exit(0)
}
const plan = readPlanFile(process.env.PLAN, model)
const doc = JSON.parse(readFileSync(process.env.PLAN, 'utf8'))
const batch = Number(process.env.BATCH)
const tokens = zipfTokens(Number(process.env.NTOK), 32000, 1.1, 7)
const rt = await createRuntime({ model, gpuMemory: doc.budgetBytes, plan, arenaBytes: arenaBytesFor(model, batch), replace: process.env.REPLACE !== '0', ...(process.env.THREADS ? { cpuThreads: Number(process.env.THREADS) } : {}) })
let replaces = 0
rt.on('replace', () => replaces++)
const r = await runTokenStream(rt, { tokens, batch, domain: 0, warmup: 2 })
console.log(`CASE ${process.env.CASE}: ${r.tokensPerS.toFixed(0)} tok/s measured vs ${doc.predicted.decodeTokensPerS.toFixed(0)} predicted (ratio ${(r.tokensPerS / doc.predicted.decodeTokensPerS).toFixed(2)}), batches ${r.batches}, replacements ${replaces}, gpuShare ${r.gpuTokenShare.toFixed(3)}`)
for (const [i, l] of r.perLayer.entries()) console.log(' ', JSON.stringify(Object.fromEntries(Object.entries(l).map(([k, v]) => [k, typeof v === 'number' ? f(v) : v]))), 'pred', JSON.stringify(doc.layers[i].predictedMs, (k, v) => typeof v === 'number' ? f(v) : v))
await rt.close()
model.close()
