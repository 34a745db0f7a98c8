import t from 'tap'
import { CostModel, type ExpertShape } from '../scheduler/cost-model.js'
import { planPlacement, predictBatchTime } from '../scheduler/planner.js'
import { Replacer } from '../scheduler/replacer.js'
import { testCalibration } from './helpers/calibration.js'

const MiB = 2 ** 20
const cost = new CostModel(testCalibration())
const L = 2
const E = 16
const expert: ExpertShape = { bytes: 64 * MiB, flopsPerToken: 64 * MiB, format: 'dense/bf16' }
const experts = Array.from({ length: L }, () => new Array(E).fill(expert))
const budgetBytes = 4 * L * expert.bytes
const batchTokens = 16

/** Zipf(1.1) over experts, ranked by `order`: shares[l][order[r]] ∝ 1/(r+1)^1.1. */
function zipfShares(order: number[]): number[][] {
  const w = order.map((_, r) => 1 / Math.pow(r + 1, 1.1))
  const sum = w.reduce((a, b) => a + b, 0)
  const s = new Array(E).fill(0)
  order.forEach((e, r) => (s[e] = w[r] / sum))
  return Array.from({ length: L }, () => s.slice())
}

/** A batch drawn from `shares` with a seeded generator (counts per expert). */
function batch(shares: number[], next: () => number): number[] {
  const c = new Array(E).fill(0)
  for (let i = 0; i < batchTokens; i++) {
    let u = next()
    let e = 0
    while (e < E - 1 && u >= shares[e]) u -= shares[e++]
    c[e]++
  }
  return c
}

t.test('re-placement follows a shifting token distribution', async (t) => {
  let x = 12345
  const next = () => (x = (Math.imul(x, 1103515245) + 12345) >>> 0) / 2 ** 32
  const before = zipfShares([...Array(E).keys()]) // experts 0, 1, 2 … hottest
  const after = zipfShares([...Array(E).keys()].reverse()) // then 15, 14, 13 … hottest
  const problem = (share: number[][]) => ({ experts, share, batchTokens, budgetBytes, cost })
  const placement = planPlacement(problem(before))
  const replacer = new Replacer({ experts, cost, budgetBytes, batchTokens, placement, assumedShare: before, halfLifeTokens: 2048 })

  // Phase 1: traffic as planned — sampling noise alone must not trigger a re-plan.
  let proposals = 0
  for (let b = 0; b < 1000; b++) {
    for (let l = 0; l < L; l++) replacer.observe(l, batch(before[l], next), batchTokens)
    if (b % 50 === 49 && replacer.propose()) proposals++
  }
  t.equal(proposals, 0, `no proposal while the load matches the plan (drift ${replacer.drift().toFixed(3)})`)

  // Phase 2: the distribution flips. The runtime applies each proposal as it comes (as it would in the
  // background); the placement must follow within a few half-lives, in a few steps.
  const ideal = planPlacement(problem(after))
  let steps = 0
  let firstAt = -1
  let reached = -1
  for (let b = 1; b <= 1000; b++) {
    for (let l = 0; l < L; l++) replacer.observe(l, batch(after[l], next), batchTokens)
    if (b % 10 !== 0) continue
    const p = replacer.propose()
    if (!p) continue
    steps++
    if (firstAt < 0) firstAt = b * batchTokens
    t.ok(p.proposedS < p.currentS && p.placement.gpuBytes <= budgetBytes, `step ${steps}: faster under the observed load, within budget`)
    // The moves turn the placement in force into the proposed one.
    for (const m of p.moves) {
      const set = new Set(replacer.placement.layers[m.layer].gpuExperts)
      for (const e of m.evict) set.delete(e)
      for (const e of m.upload) set.add(e)
      if (JSON.stringify([...set].sort((a, c) => a - c)) !== JSON.stringify(p.placement.layers[m.layer].gpuExperts)) t.fail(`moves of layer ${m.layer} do not reach the proposal`)
    }
    replacer.accept(p)
    const achieved = predictBatchTime(problem(after), replacer.placement.layers.map((l) => l.gpuExperts))
    if (reached < 0 && achieved <= ideal.predictedBatchS * 1.01) reached = b * batchTokens
  }
  t.ok(firstAt > 0 && firstAt <= 2 * 2048, `first proposal after ${firstAt} tokens of shifted traffic (half-life 2048)`)
  t.ok(reached > 0 && reached <= 6 * 2048, `within 1% of the plan for the new distribution after ${reached} tokens`)
  t.ok(steps <= 6, `in ${steps} steps`)
  t.same(replacer.placement.layers.map((l) => l.gpuExperts), ideal.layers.map((l) => l.gpuExperts), 'ends on the plan for the new distribution')

  // Phase 3: steady traffic proposes nothing more.
  let again = 0
  for (let b = 0; b < 1000; b++) {
    for (let l = 0; l < L; l++) replacer.observe(l, batch(after[l], next), batchTokens)
    if (b % 50 === 49 && replacer.propose()) again++
  }
  t.equal(again, 0, 'no thrashing once the placement matches the traffic')
})

t.test('a drift that does not change the best placement proposes nothing', async (t) => {
  const base = zipfShares([...Array(E).keys()])
  // Reorder only the cold tail: large drift in distribution terms, same hot set.
  const order = [0, 1, 2, 3, 4, 5, 6, 7, ...[8, 9, 10, 11, 12, 13, 14, 15].reverse()]
  const shifted = zipfShares(order)
  const placement = planPlacement({ experts, share: base, batchTokens, budgetBytes, cost })
  const replacer = new Replacer({ experts, cost, budgetBytes, batchTokens, placement, assumedShare: base, halfLifeTokens: 512, driftThreshold: 0.001, warmupTokens: 0 })
  for (let i = 0; i < 200; i++) for (let l = 0; l < L; l++) replacer.observe(l, shifted[l].map((s) => s * batchTokens), batchTokens)
  t.ok(replacer.drift() > 0.001)
  t.equal(replacer.propose(), null, 'no proposal: the predicted gain is below minGain')
  t.ok(replacer.drift() < 1e-9, 'and the observed load becomes the new reference')
})
