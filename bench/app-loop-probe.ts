// Where a runtime's layer time goes under different app loops, to find why sigma-lite's 256-token
// layers ran ~1.0 ms where `place` predicted 0.78 (issue #6; bench/results/h100-xeon16-2026-12-06,
// calls 14-15: routing +0.07 ms, GPU copy-in +0.085, JavaScript around the call +0.11, all against
// what the calibration's layer-call probe and measureRouteS saw). One runtime with the plan's
// placement, the same batches, four loops:
//   runner     hetmoe run's loop (stream-runner.ts): random hidden states generated in JavaScript
//              before each batch (~19 ms at 256 × 2048), then every layer with a residual add after it
//   cheap      the same, the inputs written by fillRepeating instead (no long JavaScript gap a batch)
//   layer0     the calibration probe's loop: layer 0 only, rows rewritten and the last output added
//              to them scaled to nothing (as layerCallProbe does), each call
//   cycle      that loop over every layer in turn
// For a device call; prints one table of per-layer means (ms), and with --json FILE writes them:
//   node dist/bench/app-loop-probe.js MODEL_DIR PLAN_FILE|all TOKEN_FILE [batch=256] [batches=32] [--json FILE]
// (PLAN_FILE `all`: every expert on the GPU, as the calibration's layer-call probe has its model.)
import { writeFileSync } from 'node:fs'
import { loadModel } from '../experts/model.js'
import { arenaBytesFor, createRuntime } from '../runtime/runtime.js'
import { readPlanFile, type PlanFileFacts } from '../runtime/placement.js'
import { checkTokenIds, readTokenFile } from '../scheduler/token-file.js'
import { fillRepeating, randomHidden, residualAdd } from '../runtime/token-stream.js'

const args = process.argv.slice(2)
const jsonAt = args.indexOf('--json')
const jsonFile = jsonAt >= 0 ? args.splice(jsonAt, 2)[1] : undefined
const [dir, planFile, tokenFile, batchArg = '256', batchesArg = '32'] = args
if (!dir || !planFile || !tokenFile) throw new Error('usage: node dist/bench/app-loop-probe.js MODEL_DIR PLAN_FILE|all TOKEN_FILE [batch=256] [batches=32] [--json FILE]')
const model = await loadModel(dir)
const facts: PlanFileFacts = {}
const plan = planFile === 'all' ? { layers: model.manifest.layers.map((l, layer) => ({ layer, gpuExperts: l.experts.map((_, e) => e) })) } : readPlanFile(planFile, model, facts)
const T = Number(batchArg)
const batches = Number(batchesArg)
const ids = readTokenFile(tokenFile)
checkTokenIds(ids, model.manifest.vocabSize, tokenFile)
if (ids.length < T) throw new Error(`${tokenFile} has ${ids.length} tokens, fewer than one batch of ${T}`)
const D = model.manifest.hiddenSize
const L = model.manifest.layers.length
const rt = await createRuntime({ model, gpu: 'auto', gpuMemory: facts.budgetBytes, plan, arenaBytes: arenaBytesFor(model, T) + 2 * T * D * 4, replace: false })
const STAGES = ['total', 'route', 'gpu', 'gpuPlace', 'gpuHost', 'gpuStream', 'gpuCopyIn', 'gpuKernel', 'cpu'] as const
type Stage = (typeof STAGES)[number]

const h = rt.arena.lease(T * D * 4)
const o = rt.arena.lease(T * D * 4)
const hv = h.f32(T * D)
const ov = o.f32(T * D)
const block = randomHidden(64, D, 17)
const tokensOf = (b: number) => {
  const at = (b * T) % (ids.length - T + 1)
  return ids.subarray(at, at + T)
}
const residual = () => residualAdd(hv, ov)
// The calibration's loop adds the last output scaled to nothing (runtime/calibration.ts: layerCallProbe):
// fed back at full scale over the same rows, a model whose outputs outgrow their inputs (the dense probe
// model) reaches Infinity, then NaN, which forward() rejects (call 19: BAD_INPUT at 256 tokens).
const probeResidual = () => residualAdd(hv, ov, 1e-30)
// Time inside forward() only, as the runner's report counts it.
let forwardMs = 0
const forward = async (layer: number, b: number) => {
  const t0 = performance.now()
  await rt.forward(layer, hv, { out: ov, tokenIds: tokensOf(b), domain: 0 })
  forwardMs += performance.now() - t0
}

type Loop = (b: number) => Promise<void>
const loops: Record<string, Loop> = {
  runner: async (b) => {
    randomHidden(T, D, 1000 + b, hv)
    for (let l = 0; l < L; l++) (await forward(l, b), residual())
  },
  cheap: async (b) => {
    fillRepeating(hv, block, 1 + (b % 7) / 8)
    for (let l = 0; l < L; l++) (await forward(l, b), residual())
  },
  layer0: async (b) => {
    for (let l = 0; l < L; l++) (fillRepeating(hv, block, 1 + ((b + l) % 7) / 8), probeResidual(), await forward(0, b))
  },
  cycle: async (b) => {
    for (let l = 0; l < L; l++) (fillRepeating(hv, block, 1 + ((b + l) % 7) / 8), probeResidual(), await forward(l, b))
  },
}

const results: Record<string, Record<Stage, number> & { tokensPerS: number }> = {}
async function measure(name: string, loop: Loop): Promise<void> {
  ov.fill(0)
  for (let b = 0; b < 2; b++) await loop(b) // warm-up
  const before = rt.stats().layers.map((s) => ({ ...s.ms, n: s.forwards, g: s.gpuForwards, c: s.cpuForwards }))
  forwardMs = 0
  for (let b = 0; b < batches; b++) await loop(b)
  const after = rt.stats().layers
  const sums = Object.fromEntries(STAGES.map((k) => [k, 0])) as Record<Stage, number>
  let forwards = 0
  after.forEach((s, l) => {
    const p = before[l]
    const n = s.forwards - p.n
    forwards += n
    for (const k of STAGES) {
      const per = k === 'total' || k === 'route' || k === 'gpuPlace' ? n : k === 'cpu' ? s.cpuForwards - p.c : s.gpuForwards - p.g
      if (per > 0) sums[k] += ((s.ms[k] - p[k]) / per) * n
    }
  })
  const row = Object.fromEntries(STAGES.map((k) => [k, sums[k] / Math.max(1, forwards)])) as Record<Stage, number>
  results[name] = { ...row, tokensPerS: (batches * T) / (forwardMs / 1000) }
}

try {
  for (const name of ['runner', 'cheap', 'layer0', 'cycle', 'runner']) await measure(name === 'runner' && results.runner ? 'runner again' : name, loops[name])
  console.log(`app-loop probe: ${dir}, ${T} tokens a batch, ${batches} batches a loop, ${L} layers; means a forward (ms)`)
  console.log(['loop'.padEnd(13), ...STAGES.map((k) => k.padStart(10)), 'tokens/s'.padStart(10)].join(''))
  for (const [name, r] of Object.entries(results)) console.log([name.padEnd(13), ...STAGES.map((k) => r[k].toFixed(3).padStart(10)), r.tokensPerS.toFixed(0).padStart(10)].join(''))
  if (jsonFile) writeFileSync(jsonFile, JSON.stringify({ model: dir, plan: planFile, batch: T, batches, layers: L, results }, null, 2))
} finally {
  h.release()
  o.release()
  await rt.close()
}
