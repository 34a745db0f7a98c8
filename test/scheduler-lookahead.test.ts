import t from 'tap'
import { CostModel } from '../scheduler/cost-model.js'
import { lookahead } from '../scheduler/lookahead.js'
import { readModelFile } from '../scheduler/model-file.js'
import { modelShapes } from '../scheduler/plan-report.js'
import { rreRouters } from '../scheduler/profile.js'
import { allocSelection } from '../scheduler/selection.js'
import { testCalibration } from './helpers/calibration.js'
import { throwsHetmoe } from './helpers/expect-error.js'
import { tempDir, writeTestModel } from './helpers/model-dir.js'

t.test('lookahead: every layer\'s experts, and where each runs, from token ids alone', async (t) => {
  const dir = tempDir()
  writeTestModel(dir, { layers: 4, domains: 2, expertsPerDomain: 8, hiddenSize: 2048, ffnSize: 8192, ffn: 'gelu', vocabSize: 1000 })
  const model = readModelFile(dir)
  const routers = rreRouters(model)
  const experts = modelShapes(model.manifest)
  const cost = new CostModel(testCalibration())
  const resident = [new Set([0, 1]), new Set([2]), new Set<number>(), new Set([8, 9])]
  const ctx = { routers, experts, resident, cost, streamBytes: 4 * experts[0][0].bytes }

  for (const T of [1, 4096]) {
    const tokens = Int32Array.from({ length: T }, (_, i) => (i * 31) % 1000)
    const plan = lookahead(ctx, tokens, 'd0')
    t.equal(plan.length, 4)
    for (const l of plan) {
      const sel = allocSelection(16, T)
      routers[l.layer].route(tokens, 'd0', sel)
      t.same(Array.from(l.counts), Array.from(sel.counts), `layer ${l.layer}: counts as routed`)
      t.same(l.needed, [...Array(16).keys()].filter((e) => sel.counts[e] > 0))
      t.same([...l.gpu, ...l.stream, ...l.cpu].sort((a, b) => a - b), l.needed, 'each needed expert runs in exactly one place')
      t.ok(l.gpu.every((e) => resident[l.layer].has(e)) && l.stream.every((e) => !resident[l.layer].has(e)))
      t.ok(l.stream.length * experts[0][0].bytes <= ctx.streamBytes, 'stream room respected')
      t.ok(l.needed.every((e) => e < 8), 'domain d0 uses its own group only')
    }
    const streamed = plan.reduce((s, l) => s + l.stream.length, 0)
    if (T === 1) t.equal(streamed, 0, 'decode streams nothing')
    else t.ok(streamed > 0, `prefill of 4096 tokens streams ${streamed} experts across layers`)
  }
  throwsHetmoe(t, () => lookahead(ctx, Int32Array.of(5, 1000), 0), 'BAD_INPUT', /token 1 has id 1000/, 'bad token id')
  throwsHetmoe(t, () => lookahead(ctx, Int32Array.of(5), 'd7'), 'BAD_INPUT', /unknown domain "d7"/, 'bad domain')
})

t.test('lookahead cost at decode (all layers at once, µs, median)', async (t) => {
  const dir = tempDir()
  writeTestModel(dir, { layers: 4, domains: 4, expertsPerDomain: 16, hiddenSize: 2048, ffnSize: 8192, ffn: 'gelu', vocabSize: 32000 })
  const model = readModelFile(dir)
  const experts = modelShapes(model.manifest)
  const ctx = { routers: rreRouters(model), experts, resident: [0, 1, 2, 3].map(() => new Set([0, 1, 2, 3, 4, 5, 6, 7])), cost: new CostModel(testCalibration()), streamBytes: 2 * experts[0][0].bytes }
  for (const T of [1, 16]) {
    const tokens = Int32Array.from({ length: T }, (_, i) => (i * 7919) % 32000)
    for (let i = 0; i < 2000; i++) lookahead(ctx, tokens, 2)
    const times: number[] = []
    for (let i = 0; i < 201; i++) {
      const s = process.hrtime.bigint()
      lookahead(ctx, tokens, 2)
      times.push(Number(process.hrtime.bigint() - s) / 1000)
    }
    times.sort((a, b) => a - b)
    t.comment(`lookahead, sigma-lite (4 layers × 64 experts), ${T} token(s): median ${times[100].toFixed(1)} µs for all layers`)
    if (T === 1) t.ok(times[100] / 4 < 30, 'per layer within the 30 µs budget')
  }
})
