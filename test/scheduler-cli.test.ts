import t from 'tap'
import { spawnSync } from 'node:child_process'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { unpack } from 'msgpackr'
import { packageRoot } from '../runtime/native.js'
import { CostModel } from '../scheduler/cost-model.js'
import { readModelFile } from '../scheduler/model-file.js'
import { makePlan, withRouting, type PlanDocument } from '../scheduler/plan-report.js'
import { writeDocument } from '../scheduler/document.js'
import { LoadTracker, profileFromTokens } from '../scheduler/profile.js'
import { GateRouter } from '../scheduler/route-gate.js'
import { allocSelection } from '../scheduler/selection.js'
import { checkTokenIds, readTokenFile } from '../scheduler/token-file.js'
import { measureRouteS } from '../runtime/route-cost.js'
import { testCalibration } from './helpers/calibration.js'
import { SIGMA_LITE, tempDir, writeTestModel, zipfTokens } from './helpers/model-dir.js'

const cli = join(packageRoot, 'dist', 'runtime', 'cli', 'main.js')
const dir = tempDir()
const model = join(dir, 'sigma-lite')
writeTestModel(model, SIGMA_LITE)
const tokens = zipfTokens(200_000, 32000, 1.1)
const i32 = join(dir, 'zipf.i32')
const txt = join(dir, 'zipf.txt')
writeFileSync(i32, Buffer.from(tokens.buffer))
writeFileSync(txt, Array.from(tokens).join(' ') + '\n')
const calibration = join(dir, 'calibration.json')
writeFileSync(calibration, JSON.stringify(testCalibration()))
const env = { ...process.env, HETMOE_CACHE_DIR: join(dir, 'cache'), CI: 'true' }

function hetmoe(...args: string[]) {
  const start = performance.now()
  const r = spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', env })
  return { status: r.status, stdout: r.stdout, stderr: r.stderr, ms: performance.now() - start }
}


/** A plan's layers less what depends on the routing time `place` measures in each run. */
const placementOf = (p: PlanDocument) => p.layers.map(({ predictedMs: { cpu, gpu }, ...l }) => ({ ...l, predictedMs: { cpu, gpu } }))

t.test('hetmoe place on sigma-lite with a Zipf(1.1) token file', async (t) => {
  for (const file of [i32, txt]) {
    const r = hetmoe('place', '--model', model, '--tokens', file, '--gpu-mem', '4GiB', '--calibration', calibration, '--json')
    t.equal(r.status, 0, r.stderr)
    t.comment(`place --tokens ${file.endsWith('.i32') ? '.i32' : 'text'} (200k tokens): ${r.ms.toFixed(0)} ms wall, node start-up included`)
    const plan = JSON.parse(r.stdout) as PlanDocument
    t.equal(plan.budgetBytes, 4 * 2 ** 30)
    t.ok(plan.gpuBytes > 0 && plan.gpuBytes <= plan.budgetBytes - plan.streamBytes, 'resident experts within the budget')
    t.equal(plan.gpuBytes, plan.layers.reduce((s, l) => s + l.gpuExperts.length, 0) * 64 * 2 ** 20, 'each sigma-lite expert is 64 MiB (2 × 8192 × 2048 bf16)')
    t.ok(plan.gpuTokenShare > 0.25 && plan.gpuTokenShare <= 1, `GPU serves ${(100 * plan.gpuTokenShare).toFixed(1)}% of routed tokens`)
    t.same(plan.layers.map((l) => l.layer), [0, 1, 2, 3])
    t.ok(plan.predicted.decodeTokensPerS > plan.predicted.cpuOnlyDecodeTokensPerS, 'faster than CPU only at decode')
    t.ok(plan.predicted.prefillTokensPerS > plan.predicted.cpuOnlyPrefillTokensPerS, 'and at prefill')
  }
})

t.test("place's work (read tokens, profile, plan, predictions) takes well under a second of CPU", async (t) => {
  // CPU time, not wall time: tap runs test files in parallel, so wall time here measures the neighbours.
  const m = readModelFile(model)
  const cost = new CostModel(testCalibration())
  for (const [file, domain] of [[i32, undefined], [txt, undefined], [i32, 'd0']] as const) {
    const before = process.cpuUsage()
    const start = performance.now()
    const tok = readTokenFile(file)
    checkTokenIds(tok, m.manifest.vocabSize, file)
    const routeS = { batch: measureRouteS(m, 1, domain), prefill: measureRouteS(m, 4096, domain) }
    const plan = makePlan(m.manifest, profileFromTokens(m, tok, domain), cost, { budgetBytes: 4 * 2 ** 30, batchTokens: 1, routeS })
    const used = process.cpuUsage(before)
    const cpuMs = (used.user + used.system) / 1000
    t.comment(`${file.endsWith('.i32') ? '.i32' : 'text'}, ${domain ?? 'all domains'}: ${cpuMs.toFixed(0)} ms CPU, ${(performance.now() - start).toFixed(0)} ms wall, exact ${plan.exact}`)
    t.ok(cpuMs < 1000, 'under a second')
  }
})

t.test('routing time is measured on the model and added to every layer of the prediction', async (t) => {
  const m = readModelFile(model)
  const cost = new CostModel(testCalibration())
  const profile = profileFromTokens(m, tokens, 'd0')
  const batch = measureRouteS(m, 16, 'd0')
  const prefill = measureRouteS(m, 4096, 'd0')
  t.ok(batch > 0 && batch < 0.01, `16 tokens: ${(1e6 * batch).toFixed(1)} µs a layer`)
  t.ok(prefill > batch, `4096 tokens: ${(1e6 * prefill).toFixed(1)} µs a layer`)
  const without = makePlan(m.manifest, profile, cost, { budgetBytes: 4 * 2 ** 30, batchTokens: 16 })
  const withRoute = makePlan(m.manifest, profile, cost, { budgetBytes: 4 * 2 ** 30, batchTokens: 16, routeS: { batch, prefill } })
  const L = m.manifest.layers.length
  t.same(withRoute.layers.map((l) => l.gpuExperts), without.layers.map((l) => l.gpuExperts), 'the placement does not depend on it')
  const close = (a: number, b: number) => Math.abs(a - b) <= 1e-9 * Math.max(1, Math.abs(b))
  t.ok(close(16 / withRoute.predicted.decodeTokensPerS, 16 / without.predicted.decodeTokensPerS + L * batch), 'decode: L × route more per batch')
  t.ok(close(4096 / withRoute.predicted.prefillTokensPerS, 4096 / without.predicted.prefillTokensPerS + L * prefill), 'prefill: L × route more per batch')
  t.ok(close(withRoute.layers[0].predictedMs.layer, without.layers[0].predictedMs.layer + 1e3 * batch), 'per layer, too')
  t.same(withRoute.predicted.routeUs, { batch: 1e6 * batch, prefill: 1e6 * prefill })
  t.same(without.predicted.routeUs, { batch: 0, prefill: 0 }, 'not measured: 0')
  // place adds it to its first plan instead of planning again: the same numbers, and routing replaced, not added twice.
  const added = withRouting(withRouting(without, { batch: 2 * batch, prefill: 3 * prefill }), { batch, prefill })
  t.same(added.layers.map((l) => l.gpuExperts), withRoute.layers.map((l) => l.gpuExperts))
  for (const k of ['decodeTokensPerS', 'prefillTokensPerS', 'cpuOnlyDecodeTokensPerS', 'cpuOnlyPrefillTokensPerS'] as const)
    t.ok(close(added.predicted[k], withRoute.predicted[k]), `${k}: ${added.predicted[k]} = ${withRoute.predicted[k]}`)
  t.ok(added.layers.every((l, i) => close(l.predictedMs.layer, withRoute.layers[i].predictedMs.layer) && l.predictedMs.route === withRoute.layers[i].predictedMs.route), 'per layer')
  // Pool-sized batches are timed after the layer's predicted time idle (bounded), never waiting for ever.
  for (const gapS of [5e-3, Number.NaN, Number.POSITIVE_INFINITY, 0]) {
    const start = performance.now()
    const s = measureRouteS(m, 4096, 'd0', gapS)
    t.ok(s > 0 && Number.isFinite(s) && performance.now() - start < 5000, `4096 tokens after a gap of ${gapS} s: ${(1e6 * s).toFixed(1)} µs a layer`)
  }
})

t.test('the table, the plan file (JSON or msgpack), and profiles round-trip through place', async (t) => {
  const json = join(dir, 'plan.json')
  const pack = join(dir, 'plan.msgpack')
  const table = hetmoe('place', '--model', model, '--tokens', i32, '--gpu-mem', '6GiB', '--domain', 'd1', '--batch', '16', '--calibration', calibration, '--out', json)
  t.equal(table.status, 0, table.stderr)
  t.match(table.stdout, /layer +on GPU +experts +bytes +tokens/)
  t.match(table.stdout, /decode +\(batch 16\) +[\d.k]+ tokens\/s/)
  t.match(table.stdout, /prefill \(batch 4096\) +[\d.k]+ tokens\/s/)
  t.match(table.stdout, /domain "d1"/)
  t.match(table.stdout, /plan written to/)
  const fromJson = JSON.parse(readFileSync(json, 'utf8')) as PlanDocument
  t.ok(fromJson.layers.every((l) => l.gpuExperts.every((e) => e >= 16 && e < 32)), 'domain d1 uses experts 16–31 only')
  t.equal(fromJson.batchTokens, 16)
  t.equal(hetmoe('place', '--model', model, '--tokens', i32, '--gpu-mem', '6GiB', '--domain', '1', '--batch', '16', '--calibration', calibration, '--out', pack).status, 0)
  const fromPack = unpack(readFileSync(pack)) as PlanDocument
  t.same(placementOf(fromPack), placementOf(fromJson), 'msgpack holds the same plan; a domain index equals its name')

  const profile = join(dir, 'profile.msgpack')
  const p = hetmoe('profile', '--model', model, '--tokens', txt, '--domain', 'd1', '--out', profile)
  t.equal(p.status, 0, p.stderr)
  t.match(p.stdout, /200000 tokens/)
  t.match(p.stdout, /layer +active +busiest experts/)
  const viaProfile = hetmoe('place', '--model', model, '--profile', profile, '--gpu-mem', '6GiB', '--batch', '16', '--calibration', calibration, '--json')
  t.equal(viaProfile.status, 0, viaProfile.stderr)
  t.same(placementOf(JSON.parse(viaProfile.stdout) as PlanDocument), placementOf(fromJson), 'a profile gives the plan its token file gives')
  const pj = hetmoe('profile', '--model', model, '--tokens', i32, '--json')
  t.equal(JSON.parse(pj.stdout).format, 'hetmoe-profile')
})

t.test('gated models are placed from a recorded profile', async (t) => {
  const gated = join(dir, 'fine')
  writeTestModel(gated, { name: 'fine', layers: 2, experts: 64, topK: 6, hiddenSize: 256, ffnSize: 1408, vocabSize: 1000 })
  const m = readModelFile(gated)
  const tracker = new LoadTracker('fine', [64, 64], 6)
  let x = 3
  for (let l = 0; l < 2; l++) {
    const router = new GateRouter({ weight: m.gateWeight(l), numExperts: 64, hiddenSize: 256, topK: 6, normalize: false })
    for (let b = 0; b < 20; b++) {
      const hidden = Float32Array.from({ length: 16 * 256 }, () => (x = (x * 48271) % 2147483647) / 2147483647 - 0.5)
      const sel = allocSelection(64, 96)
      router.route(hidden, 16, sel)
      tracker.record(l, sel.counts, 16)
    }
  }
  const profile = join(dir, 'fine-profile.json')
  writeDocument(profile, tracker.profile())
  const r = hetmoe('place', '--model', gated, '--profile', profile, '--gpu-mem', '64MiB', '--batch', '16', '--calibration', calibration, '--json')
  t.equal(r.status, 0, r.stderr)
  const plan = JSON.parse(r.stdout) as PlanDocument
  t.ok(plan.gpuBytes <= plan.budgetBytes && plan.gpuBytes > 0)
  t.ok(plan.gpuTokenShare > 0 && plan.gpuTokenShare < 1)
  const table = hetmoe('place', '--model', gated, '--profile', profile, '--gpu-mem', '64MiB', '--batch', '16', '--calibration', calibration)
  t.ok(table.stdout.split('\n').filter((l) => /^\d/.test(l)).every((l) => l.length <= 80), 'long expert lists are shortened in the table')
})

t.test('without a runtime calibration, place estimates this machine once, says so, and says GPU figures are reference numbers', async (t) => {
  const first = hetmoe('place', '--model', model, '--tokens', i32, '--gpu-mem', '4GiB')
  t.equal(first.status, 0, first.stderr)
  t.match(first.stderr, /no runtime calibration cached.*hetmoe calibrate/)
  t.match(first.stdout, /H100 reference figures/)
  const second = hetmoe('place', '--model', model, '--tokens', i32, '--gpu-mem', '4GiB')
  const measured = (out: string) => /measured (\S+)/.exec(out)?.[1]
  t.ok(measured(first.stdout), 'the report says when the calibration was measured')
  t.equal(measured(second.stdout), measured(first.stdout), 'the estimate was cached, not measured again')
  t.comment(`place with this machine's cached calibration: ${second.ms.toFixed(0)} ms wall (first run, measuring: ${first.ms.toFixed(0)} ms)`)
})

t.test('bad flags and inputs: clear errors naming the flag', async (t) => {
  const gated = join(dir, 'gated')
  writeTestModel(gated, { layers: 1, experts: 8, topK: 2, hiddenSize: 16, ffnSize: 32, vocabSize: 100 })
  const junk = join(dir, 'junk.txt')
  writeFileSync(junk, '1 2 3\n4 five 6\n')
  const txtSmall = join(dir, 'small.txt')
  writeFileSync(txtSmall, '1 2 3')
  const far = join(dir, 'far.txt')
  writeFileSync(far, '1 2 32000')
  const cases: [string[], number, RegExp][] = [
    [['place', '--model', model, '--tokens', i32], 2, /--gpu-mem SIZE is required/],
    [['place', '--model', model, '--tokens', i32, '--gpu-mem', 'lots'], 2, /--gpu-mem must be a size/],
    [['place', '--model', model, '--tokens', i32, '--gpu-mem', '1GiB', '--batch', '0'], 2, /--batch must be an integer >= 1/],
    [['place', '--tokens', i32, '--gpu-mem', '1GiB'], 2, /--model DIR is required/],
    [['place', '--model', model, '--gpu-mem', '1GiB'], 2, /exactly one of --tokens FILE or --profile FILE/],
    [['place', '--model', model, '--tokens', i32, '--profile', i32, '--gpu-mem', '1GiB'], 2, /exactly one of --tokens/],
    [['place', '--model', dir, '--tokens', i32, '--gpu-mem', '1GiB'], 1, /--model .*: .*not a hetmoe model/],
    [['place', '--model', model, '--tokens', junk, '--gpu-mem', '1GiB'], 1, /--tokens: .*junk\.txt, line 2, column 3: "five" is not an integer/],
    [['place', '--model', model, '--tokens', far, '--gpu-mem', '1GiB'], 1, /--tokens: .*token 2 .* is 32000, outside the model's vocabulary \[0, 32000\)/],
    [['place', '--model', model, '--tokens', i32, '--gpu-mem', '1GiB', '--domain', 'math'], 1, /--domain: unknown domain "math"/],
    [['place', '--model', model, '--profile', junk, '--gpu-mem', '1GiB'], 1, /--profile: .*not a valid profile/],
    [['place', '--model', gated, '--tokens', txtSmall, '--gpu-mem', '1GiB'], 1, /learned gate.*--profile/],
    [['place', '--model', model, '--tokens', i32, '--gpu-mem', '1GiB', '--calibration', junk], 1, /--calibration: .*not a valid calibration/],
    [['profile', '--model', model], 2, /exactly one of --tokens/],
  ]
  for (const [args, status, re] of cases) {
    const r = hetmoe(...args)
    t.equal(r.status, status, `${args.slice(1).join(' ')}: exit ${status}`)
    t.match(r.stderr, re, `says: ${r.stderr.split('\n')[0]}`)
  }
})
