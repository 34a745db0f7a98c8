import t from 'tap'
import { CostModel, type ExpertShape, type FormatKey } from '../scheduler/cost-model.js'
import { layerModels, planPlacement, predictBatchTime, type PlacementProblem } from '../scheduler/planner.js'
import { planStreaming } from '../scheduler/streaming.js'
import { testCalibration } from './helpers/calibration.js'
import { throwsHetmoe } from './helpers/expect-error.js'

const MiB = 2 ** 20
const cost = new CostModel(testCalibration())

function rng(seed: number): () => number {
  let x = seed >>> 0
  return () => {
    x = (Math.imul(x ^ (x >>> 15), 0x2c1b3c6d) + 0x6d2b79f5) >>> 0
    x ^= x >>> 13
    return (x >>> 0) / 2 ** 32
  }
}

const FORMATS: [FormatKey, number][] = [['dense/bf16', 1], ['2:4/bf16', 10 / 16], ['75%/bf16', 5 / 16]]

/** Random layers; `mixed`: each expert its own format and size, else one format and size per problem. */
function randomProblem(r: () => number, L: number, E: number, mixed = true): PlacementProblem {
  const experts: ExpertShape[][] = []
  const f0 = Math.floor(r() * 3)
  const share: number[][] = []
  for (let l = 0; l < L; l++) {
    const ex: ExpertShape[] = []
    const w: number[] = []
    for (let e = 0; e < E; e++) {
      const [format, ratio] = FORMATS[mixed ? Math.floor(r() * 3) : f0]
      const params = ((mixed ? 8 + Math.floor(r() * 56) : 32) * MiB) / 2
      ex.push({ bytes: Math.round(2 * params * ratio), flopsPerToken: 2 * params, format })
      w.push(r() < 0.15 ? 0 : Math.pow(r(), 3)) // skewed, some experts idle
    }
    const sum = w.reduce((a, b) => a + b, 0) || 1
    experts.push(ex)
    share.push(w.map((x) => x / sum))
  }
  const total = experts.flat().reduce((s, e) => s + e.bytes, 0)
  const batchTokens = [1, 4, 64, 1024][Math.floor(r() * 4)]
  return { experts, share, batchTokens, budgetBytes: Math.floor(total * r() * 0.8), cost }
}

/** Every assignment of every expert of every layer. */
function bruteForce(p: PlacementProblem): number {
  const flat = p.experts.flatMap((ex, l) => ex.map((e, i) => ({ l, i, bytes: e.bytes })))
  const models = layerModels(p)
  let best = Infinity
  for (let mask = 0; mask < 2 ** flat.length; mask++) {
    let bytes = 0
    const sets: number[][] = p.experts.map(() => [])
    flat.forEach((x, k) => {
      if (mask & (1 << k)) {
        bytes += x.bytes
        sets[x.l].push(x.i)
      }
    })
    if (bytes <= p.budgetBytes) best = Math.min(best, predictBatchTime(p, sets, models))
  }
  return best
}

const bytesOf = (p: PlacementProblem, sets: number[][]) => sets.reduce((s, set, l) => s + set.reduce((b, e) => b + p.experts[l][e].bytes, 0), 0)

t.test('exact on small cases: equals brute force over all assignments', async (t) => {
  const r = rng(11)
  let wrong = 0
  for (let c = 0; c < 60; c++) {
    const p = randomProblem(r, 1 + Math.floor(r() * 3), 2 + Math.floor(r() * 4))
    const best = bruteForce(p)
    const plan = planPlacement(p)
    t.ok(plan.exact && plan.gpuBytes <= p.budgetBytes, `case ${c}: exact, within budget`)
    if (Math.abs(plan.predictedBatchS - best) > 1e-9 * best) {
      wrong++
      t.fail(`case ${c}: planner ${plan.predictedBatchS} vs brute force ${best}`)
    }
    t.ok(planPlacement(p, { exactLimit: 0 }).predictedBatchS >= best * (1 - 1e-9), 'the heuristic never beats the optimum')
  }
  t.equal(wrong, 0, 'optimal in all 60 cases')
})

t.test('the heuristic (layers over exactLimit experts) against the exact search on 10–16-expert layers', async (t) => {
  for (const mixed of [false, true]) {
    const r = rng(3)
    let worst = 1
    let sum = 0
    const n = 30
    for (let c = 0; c < n; c++) {
      const p = randomProblem(r, 2 + Math.floor(r() * 3), 10 + Math.floor(r() * 7), mixed)
      const q = planPlacement(p, { exactLimit: 0 }).predictedBatchS / planPlacement(p).predictedBatchS
      worst = Math.max(worst, q)
      sum += q
    }
    t.comment(`${mixed ? 'mixed formats within a layer' : 'one format per layer'}: heuristic/optimal mean ${(sum / n).toFixed(4)}, worst ${worst.toFixed(4)}`)
    if (mixed) t.ok(sum / n < 1.02 && worst < 1.15, 'mixed sizes (a knapsack): close to optimal')
    else t.ok(worst < 1.001, 'equal sizes (real models): optimal')
  }
})

t.test('budget is never exceeded (property test, exact and heuristic paths)', async (t) => {
  const r = rng(2024)
  let violations = 0
  let bad = 0
  for (let c = 0; c < 40; c++) {
    const p = randomProblem(r, 1 + Math.floor(r() * 4), 4 + Math.floor(r() * 40))
    for (const budgetBytes of [0, 1, p.budgetBytes, Math.floor(p.budgetBytes / 3), p.experts.flat().reduce((s, e) => s + e.bytes, 0) + 1]) {
      const plan = planPlacement({ ...p, budgetBytes })
      const sets = plan.layers.map((l) => l.gpuExperts)
      const used = bytesOf(p, sets)
      if (used > budgetBytes || plan.gpuBytes !== used) violations++
      for (const [l, set] of sets.entries())
        if (new Set(set).size !== set.length || set.some((e) => !(e >= 0 && e < p.experts[l].length) || p.share[l][e] === 0)) bad++
    }
  }
  t.equal(violations, 0, 'resident bytes ≤ budget, and reported bytes are the resident experts\' bytes')
  t.equal(bad, 0, 'valid, distinct, used experts only')
})

t.test('minimising batch time beats most-popular-first', async (t) => {
  const r = rng(99)
  let strictly = 0
  let worse = 0
  for (let c = 0; c < 40; c++) {
    const p = randomProblem(r, 3, 5)
    const plan = planPlacement(p)
    // Most popular first, across layers, while it fits.
    const all = p.experts.flatMap((ex, l) => ex.map((e, i) => ({ l, i, bytes: e.bytes, share: p.share[l][i] }))).sort((a, b) => b.share - a.share)
    const sets: number[][] = p.experts.map(() => [])
    let used = 0
    for (const x of all)
      if (x.share > 0 && used + x.bytes <= p.budgetBytes) {
        sets[x.l].push(x.i)
        used += x.bytes
      }
    const popular = predictBatchTime(p, sets)
    if (plan.predictedBatchS > popular * (1 + 1e-9)) worse++
    if (plan.predictedBatchS < popular * 0.98) strictly++
  }
  t.equal(worse, 0, 'never worse')
  t.ok(strictly >= 5, `clearly better (> 2%) in ${strictly} of 40 cases`)
})

t.test('concurrency: with many tokens the planner balances CPU and GPU instead of filling the GPU', async (t) => {
  // One layer, four equal experts with equal load, a big batch, and a GPU only a little faster than the
  // CPU: filling the GPU would leave the CPU idle, so the best split keeps work on the CPU even though
  // the budget could take every expert.
  const e: ExpertShape = { bytes: 64 * MiB, flopsPerToken: 64 * MiB, format: 'dense/bf16' }
  const slowGpu = new CostModel(testCalibration({ gpu: { readBytesPerS: { 'dense/bf16': 120e9 }, flopsPerS: { 'dense/bf16': 5e12 }, expertOverheadS: 0, layerOverheadS: 0 } }))
  const p: PlacementProblem = { experts: [[e, e, e, e]], share: [[0.25, 0.25, 0.25, 0.25]], batchTokens: 4096, budgetBytes: 4 * e.bytes, cost: slowGpu }
  const plan = planPlacement(p)
  t.ok(plan.layers[0].gpuExperts.length < 4, `keeps ${4 - plan.layers[0].gpuExperts.length} expert(s) on the CPU`)
  t.ok(plan.predictedBatchS < predictBatchTime(p, [[0, 1, 2, 3]]), 'and is faster than all-GPU')
  t.ok(plan.predictedBatchS < predictBatchTime(p, [[]]), 'and than all-CPU')
})

t.test('no GPU: nothing is placed', async (t) => {
  const p = randomProblem(rng(5), 2, 6)
  const plan = planPlacement({ ...p, budgetBytes: 1e12, cost: new CostModel(testCalibration({ gpu: null, pcie: null })) })
  t.same(plan.layers.map((l) => l.gpuExperts), [[], []])
  t.ok(Number.isFinite(plan.predictedBatchS))
})

t.test('sigma-lite sizes plan well under a second', async (t) => {
  const e: ExpertShape = { bytes: 64 * MiB, flopsPerToken: 64 * MiB, format: 'dense/bf16' }
  const zipf = (n: number, off: number) => Array.from({ length: n }, (_, i) => 1 / Math.pow(((i + off) % n) + 1, 1.1))
  for (const [what, active] of [['one domain (16 active experts per layer: exact)', 16], ['all domains (64 active: heuristic)', 64]] as const) {
    const share = Array.from({ length: 4 }, (_, l) => {
      const w = [...zipf(active, l * 5), ...new Array(64 - active).fill(0)]
      const s = w.reduce((a, b) => a + b, 0)
      return w.map((x) => x / s)
    })
    for (const batchTokens of [1, 256]) {
      const experts = Array.from({ length: 4 }, () => new Array(64).fill(e))
      const start = performance.now()
      const plan = planPlacement({ experts, share, batchTokens, budgetBytes: 16 * 64 * MiB, cost })
      const ms = performance.now() - start
      t.comment(`${what}, batch ${batchTokens}: ${ms.toFixed(0)} ms, ${plan.layers.reduce((s, l) => s + l.gpuExperts.length, 0)} experts on the GPU, exact ${plan.exact}`)
      t.ok(ms < 1000, `${what}, batch ${batchTokens}: under a second`)
      t.equal(plan.exact, active === 16)
    }
  }
})

t.test('per-batch streaming: nothing at decode, the busiest cold experts at prefill', async (t) => {
  const e: ExpertShape = { bytes: 64 * MiB, flopsPerToken: 64 * MiB, format: 'dense/bf16' }
  const experts = new Array(8).fill(e)
  const resident = (x: number) => x < 2
  const decode = planStreaming(experts, [0, 0, 0, 1, 0, 0, 0, 0], resident, cost, 1e12)
  t.same(decode.stream, [], 'one token: the copy costs more than the CPU read')
  const prefill = planStreaming(experts, [900, 800, 700, 600, 500, 30, 2, 0], resident, cost, 1e12)
  t.ok(prefill.stream.length > 0, `streams ${prefill.stream.join(', ')}`)
  t.ok(prefill.stream.every((x) => x >= 2 && x <= 6), 'only cold experts with tokens')
  t.ok(prefill.stream.includes(2), 'the busiest cold expert first')
  t.ok(!prefill.stream.includes(6), 'not one with 2 tokens')
  t.ok(prefill.layerS < prefill.withoutS)
  const tight = planStreaming(experts, [900, 800, 700, 600, 500, 30, 2, 0], resident, cost, 64 * MiB)
  t.ok(tight.stream.length <= 1, 'stream room respected')
  const none = planStreaming(experts, [900, 800, 700, 600, 500, 30, 2, 0], resident, new CostModel(testCalibration({ gpu: null, pcie: null })), 1e12)
  t.same(none.stream, [])
})

t.test('per-batch streaming: copies beside the CPU job at the rate measured so, and the job slowed by them', async (t) => {
  const e: ExpertShape = { bytes: 64 * MiB, flopsPerToken: 64 * MiB, format: 'dense/bf16' }
  const experts = new Array(8).fill(e)
  const resident = (x: number) => x < 2
  const counts = [900, 800, 700, 600, 500, 30, 2, 0]
  const idle = planStreaming(experts, counts, resident, cost, 1e12)
  const beside = (besideCpu: { bytesPerS: number; cpuSlowdown: number }) => new CostModel(testCalibration({ pcie: { bytesPerS: 25e9, latencyS: 10e-6, besideCpu } }))
  t.same(planStreaming(experts, counts, resident, beside({ bytesPerS: 25e9, cpuSlowdown: 1 }), 1e12), idle, 'measured as fast as idle: the same plan')
  // 64 MiB at 2 GB/s (34 ms) beside the job costs more than any expert's CPU time (≤ 15 ms).
  const slowCopies = planStreaming(experts, counts, resident, beside({ bytesPerS: 2e9, cpuSlowdown: 1 }), 1e12)
  t.same(slowCopies.stream, [], 'copies slow beside the CPU: nothing streamed')
  t.equal(slowCopies.layerS, idle.withoutS)
  // Room for one: the layer stays CPU-bound, and its job is slowed while that copy runs.
  const slow = beside({ bytesPerS: 25e9, cpuSlowdown: 3 })
  const one = planStreaming(experts, counts, resident, cost, 64 * MiB)
  const slowJob = planStreaming(experts, counts, resident, slow, 64 * MiB)
  t.same(slowJob.stream, one.stream, `still worth it: ${one.stream.join(', ')}`)
  const extra = slow.cpuBesideUploadS(one.layerS, slow.tPcie(64 * MiB, true))
  t.ok(extra > 1e-3 && Math.abs(slowJob.layerS - (one.layerS + extra)) < 1e-12, `the job slowed by the copy: +${(1e3 * extra).toFixed(2)} ms`)
  // Streaming a layer's last cold expert leaves the CPU idle: its copy goes at the idle rate.
  const lastCold = planStreaming(experts, [900, 800, 700, 600, 500, 30, 2, 900], (x) => x < 7, beside({ bytesPerS: 2e9, cpuSlowdown: 3 }), 1e12)
  t.same(lastCold.stream, [7], 'the only cold expert: copied with the CPU idle')
})

t.test('bad problems are refused naming the option', async (t) => {
  const p = randomProblem(rng(8), 2, 3)
  throwsHetmoe(t, () => planPlacement({ ...p, budgetBytes: NaN }), 'BAD_OPTION', /options\.budgetBytes/, 'NaN budget')
  throwsHetmoe(t, () => planPlacement({ ...p, batchTokens: 0 }), 'BAD_OPTION', /options\.batchTokens must be a positive integer/, 'zero batch')
  throwsHetmoe(t, () => planPlacement({ ...p, share: [p.share[0]] }), 'BAD_OPTION', /options\.share must be one entry per layer \(2\)/, 'layers')
  throwsHetmoe(t, () => planPlacement({ ...p, share: [p.share[0], [0.5, NaN, 0.5]] }), 'BAD_OPTION', /options\.share\[1\]\[1\]/, 'NaN share')
})
