// Probe: stage medians of forwards, and within the compute stage the native calls (post, join run,
// wait spin, retire), for tiny and mid-size models. Config from the environment (LABEL, THREADS,
// ITERS, MODELS, and the runtime's HETMOE_* toggles).
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
// Run from this folder after `npm run build:native && npx tsc -p .` at the repository root (DIST: another build's dist/).
const DIST = process.env.DIST ?? '../../../dist'
const { createRuntime } = await import(`${DIST}/runtime/runtime.js`)
const { loadModel } = await import(`${DIST}/experts/model.js`)
const { synthModel } = await import(`${DIST}/experts/synth.js`)
const { randomHidden, uniformTokens } = await import(`${DIST}/runtime/token-stream.js`)
const { native } = await import(`${DIST}/runtime/native.js`)
// GAP_US: busy time between forwards (not timed), as a decode step's other work between MoE layers:
// past the workers' idle spin (100 µs) they are asleep when the next layer comes.
const gapUs = Number(process.env.GAP_US ?? 0)
const busy = (us) => { const end = performance.now() + us / 1000; while (performance.now() < end); }

const iters = Number(process.env.ITERS ?? 1000)
const threads = process.env.THREADS ? Number(process.env.THREADS) : undefined
const label = process.env.LABEL ?? 'default'
const a = native()
const acc = {}
const wrap = (name) => {
  const f = a[name]
  a[name] = function (...args) {
    const t0 = performance.now()
    const r = f.apply(this, args)
    ;(acc[name] ??= []).push((performance.now() - t0) * 1000)
    if (name === 'cpuLayerRun') (acc.mainBlocks ??= []).push(r.blocks)
    if (name === 'crewJoin') (args[3] === true || args[3] === 'alone' ? (acc.solo ??= []) : (acc.joinCrew ??= [])).push((performance.now() - t0) * 1000)
    return r
  }
}
for (const n of ['crewPost', 'cpuLayerRun', 'cpuLayerWaitSpin', 'crewRetire', 'crewJoin']) if (a[n]) wrap(n)
const med = (xs) => (xs && xs.length ? [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)] : NaN)
const p90 = (xs) => (xs && xs.length ? [...xs].sort((x, y) => x - y)[Math.floor(xs.length * 0.9)] : NaN)
const rre = (name, hidden, inner) => ({ name, layers: 1, hidden, inner, ffn: 'swiglu', routing: { kind: 'rre', domains: 2, expertsPerDomain: 4 }, vocabSize: 32000 })
const gate = (name, hidden, inner) => ({ name, layers: 1, hidden, inner, ffn: 'swiglu', routing: { kind: 'gate', experts: 8, topK: 2, normalize: true }, vocabSize: 32000 })
const all = [rre('tiny-rre', 64, 128), gate('tiny-gate', 64, 128), gate('g128x256', 128, 256), gate('g256x512', 256, 512)]
const want = (process.env.MODELS ?? 'tiny-rre,tiny-gate,g128x256,g256x512').split(',')
const dir = mkdtempSync(join(tmpdir(), 'probe-'))
try {
  for (const preset of all.filter((p) => want.includes(p.name))) {
    const out = join(dir, preset.name)
    await synthModel({ preset, out })
    const model = await loadModel(out)
    const rt = await createRuntime({ model, gpu: 'off', ...(threads ? { cpuThreads: threads } : {}) })
    for (const T of [1, 4, 16]) {
      const x = randomHidden(T, preset.hidden, T)
      const ids = uniformTokens(T, preset.vocabSize, T)
      const o = new Float32Array(T * preset.hidden)
      const st = { route: [], compute: [], combine: [], total: [] }
      let before = rt.stats().layers[0].ms
      for (let i = 0; i < iters + 200; i++) {
        if (i === 200) for (const k of Object.keys(acc)) acc[k] = []
        if (gapUs) busy(gapUs)
        const t0 = performance.now()
        await rt.forward(0, x, { tokenIds: ids, domain: 0, out: o })
        const t1 = performance.now()
        const after = rt.stats().layers[0].ms
        if (i >= 200) {
          st.total.push((t1 - t0) * 1000)
          for (const k of ['route', 'compute', 'combine']) st[k].push((after[k] - before[k]) * 1000)
        }
        before = after
      }
      const f = (v) => (Number.isNaN(v) ? '     -' : v.toFixed(1).padStart(6))
      console.log(`${label.padEnd(16)} ${preset.name.padEnd(9)} T=${String(T).padStart(2)} thr=${String(threads ?? 'all').padEnd(3)} tot${f(med(st.total))} p90${f(p90(st.total))} route${f(med(st.route))} comp${f(med(st.compute))} comb${f(med(st.combine))} | post${f(med(acc.crewPost))} run${f(med(acc.cpuLayerRun))} spin${f(med(acc.cpuLayerWaitSpin))} ret${f(med(acc.crewRetire))} solo${f(med(acc.solo))} join${f(med(acc.joinCrew))} nSolo ${acc.solo?.length ?? 0} nJoin ${acc.joinCrew?.length ?? 0} nRet ${acc.crewRetire?.length ?? 0}`)
      for (const k of Object.keys(acc)) acc[k] = []
    }
    await rt.close()
    model.close()
  }
} finally {
  rmSync(dir, { recursive: true, force: true })
}
