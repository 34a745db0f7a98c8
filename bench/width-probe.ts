// Where a decode layer's routing and combine go at real widths (issue #7: mixtral's gate, D = 4096 ×
// 8 experts top-2, and a 64-expert top-6 gate at D = 2048), split into parts the overhead bench
// (`hetmoe bench overhead --models mixtral-width,fine-width`) reports as one number. For a device call:
//   node dist/bench/width-probe.js [tokens=1,4,16] [iters=1000] [--json FILE]
// Parts, median µs over `iters` calls each, every one on the runtime's own arena and crew:
//   route/plain   the forward's route stage with the hidden states in a plain Float32Array (copied in)
//   route/arena   the same with the hidden states already in the arena (no copy in)
//   combine       the forward's combine stage (top-k sum out of the arena)
//   copy-in       copying T × D floats into the arena on this thread (what route/plain adds)
//   gate/thread   the gate's logits on this thread (native gateLogits, weights hot)
//   gate/crew     the same shared with the crew's workers (CpuCrew.gateLogits; "-" when not shared)
//   select/js     top-k and weights from those logits in JavaScript (GateRouter.routeLogits)
//   select/native the same natively (native gateSelect, the same bits; the runtime uses it for
//                 unrenormalised gates from 64 logits, route-layer.ts)
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createRuntime } from '../runtime/runtime.js'
import { loadModel } from '../experts/model.js'
import { synthModel, type SynthPreset } from '../experts/synth.js'
import { randomHidden } from '../runtime/token-stream.js'
import { crewOf } from '../runtime/cpu-crew.js'
import { copyF32 } from '../runtime/combine.js'
import { native } from '../runtime/native.js'
import type { GateRouting } from '../experts/manifest.js'
import { benchMachine } from './support/machine.js'
import { GateRouter } from '../scheduler/route-gate.js'
import { allocSelection } from '../scheduler/selection.js'

const PRESETS: SynthPreset[] = [
  { name: 'mixtral-width', layers: 1, hidden: 4096, inner: 16, ffn: 'swiglu', routing: { kind: 'gate', experts: 8, topK: 2, normalize: true }, vocabSize: 32000 },
  { name: 'fine-width', layers: 1, hidden: 2048, inner: 16, ffn: 'swiglu', routing: { kind: 'gate', experts: 64, topK: 6, normalize: false }, vocabSize: 32000 },
]

const args = process.argv.slice(2)
const jsonAt = args.indexOf('--json')
const jsonFile = jsonAt >= 0 ? args.splice(jsonAt, 2)[1] : undefined
const tokens = (args[0] ?? '1,4,16').split(',').map(Number)
const iters = Number(args[1] ?? 1000)
const median = (a: number[]) => a.sort((x, y) => x - y)[a.length >> 1]
const timeUs = (f: () => void) => {
  const s: number[] = []
  for (let i = 0; i < iters + 100; i++) {
    const t0 = performance.now()
    f()
    if (i >= 100) s.push((performance.now() - t0) * 1000)
  }
  return median(s)
}

const dir = mkdtempSync(join(tmpdir(), 'hetmoe-width-'))
const rows: Record<string, number | string>[] = []
console.log(`width probe, ${benchMachine().cpu}, ${iters} calls a part, median µs`)
console.log('model          T  route/plain route/arena combine copy-in gate/thread gate/crew select/js select/native')
try {
  for (const preset of PRESETS) {
    await synthModel({ preset, out: join(dir, preset.name) })
    const model = await loadModel(join(dir, preset.name))
    const rt = await createRuntime({ model, gpu: 'off' })
    const crew = crewOf(rt.arena)!
    const D = preset.hidden
    const routing = model.manifest.layers[0].routing as GateRouting
    const E = model.manifest.layers[0].experts.length
    const W = model.gateWeight(0)
    for (const T of tokens) {
      const plain = randomHidden(T, D, T)
      const hLease = rt.arena.lease(T * D * 4)
      const oLease = rt.arena.lease(T * D * 4)
      const lLease = rt.arena.lease(T * E * 8, 64)
      const h = hLease.f32(T * D)
      h.set(plain)
      const out = oLease.f32(T * D)
      const logits = lLease.f64(T * E)
      const stage = async (x: Float32Array) => {
        const route: number[] = []
        const combine: number[] = []
        let before = rt.stats().layers[0].ms
        for (let i = 0; i < iters + 100; i++) {
          await rt.forward(0, x, { out })
          const after = rt.stats().layers[0].ms
          if (i >= 100) (route.push((after.route - before.route) * 1000), combine.push((after.combine - before.combine) * 1000))
          before = after
        }
        return { route: median(route), combine: median(combine) }
      }
      const p = await stage(plain)
      const a = await stage(h)
      const copy = timeUs(() => copyF32(h, plain))
      const gateThread = timeUs(() => native().gateLogits(h, W, T, D, E, logits))
      let shared = true
      const gateCrew = timeUs(() => {
        shared = crew.gateLogits(h, { weightsId: model.weightsId!, offset: routing.weight.offset }, T, D, E, logits, 0) !== undefined && shared
      })
      const K = routing.topK
      const router = new GateRouter({ weight: W, numExperts: E, hiddenSize: D, topK: K, normalize: routing.normalize })
      const sel = allocSelection(E, T * K)
      const selectJs = timeUs(() => router.routeLogits(logits, T, sel))
      const selectNative = timeUs(() => native().gateSelect(logits, T, E, K, routing.normalize, sel.counts, sel.offsets, sel.tokenRows, sel.outRows, sel.scales))
      const row = { model: preset.name, tokens: T, routePlainUs: p.route, routeArenaUs: a.route, combineUs: a.combine, copyInUs: copy, gateThreadUs: gateThread, gateCrewUs: shared ? gateCrew : '-', selectJsUs: selectJs, selectNativeUs: selectNative }
      rows.push(row)
      const f = (v: number | string, w: number) => (typeof v === 'number' ? v.toFixed(1) : v).padStart(w)
      console.log(`${preset.name.padEnd(14)} ${String(T).padStart(2)} ${f(p.route, 12)} ${f(a.route, 11)} ${f(a.combine, 7)} ${f(copy, 7)} ${f(gateThread, 11)} ${f(row.gateCrewUs, 9)} ${f(selectJs, 9)} ${f(selectNative, 13)}`)
      hLease.release()
      oLease.release()
      lLease.release()
    }
    await rt.close()
    model.close()
  }
} finally {
  rmSync(dir, { recursive: true, force: true })
}
if (jsonFile) writeFileSync(jsonFile, JSON.stringify({ machine: benchMachine(), iters, rows }, null, 2))
