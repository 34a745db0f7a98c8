import t from 'tap'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { writeDocument } from '../scheduler/document.js'
import { readModelFile } from '../scheduler/model-file.js'
import { LoadTracker, profileFromTokens, profileShares, readProfile, rreRouters } from '../scheduler/profile.js'
import { GateRouter } from '../scheduler/route-gate.js'
import { allocSelection } from '../scheduler/selection.js'
import { checkTokenIds, parseText, readTokenFile } from '../scheduler/token-file.js'
import { throwsHetmoe } from './helpers/expect-error.js'
import { tempDir, writeTestModel } from './helpers/model-dir.js'

const text = (s: string) => parseText(Buffer.from(s), 'tokens.txt')

t.test('token files: text with any whitespace, and raw int32 (.i32)', async (t) => {
  t.same(Array.from(text('1 2\t3\n\n 40\r\n5')), [1, 2, 3, 40, 5])
  t.same(Array.from(text('  7  ')), [7])
  t.same(Array.from(text('2147483647 -3')), [2147483647, -3], 'negatives parse; the range check reports them')
  const big = Array.from({ length: 100_000 }, (_, i) => (i * 7919) % 32000)
  const parsed = text(big.join('\n'))
  t.ok(parsed.length === big.length && big.every((v, i) => parsed[i] === v), 'a long stream (the buffer grows)')
  const dir = tempDir()
  const i32 = join(dir, 'tokens.i32')
  writeFileSync(i32, Buffer.from(Int32Array.of(5, 0, 31999, 7).buffer))
  t.same(Array.from(readTokenFile(i32)), [5, 0, 31999, 7])
  const txt = join(dir, 'tokens.txt')
  writeFileSync(txt, '3 1 4 1 5\n9 2 6\n')
  t.same(Array.from(readTokenFile(txt)), [3, 1, 4, 1, 5, 9, 2, 6])
})

t.test('token files: junk and out-of-range ids give clear errors', async (t) => {
  throwsHetmoe(t, () => text('1 2\n3 abc 4'), 'BAD_INPUT', /tokens\.txt, line 2, column 3: "abc" is not an integer token id/, 'a word')
  throwsHetmoe(t, () => text('1 2.5'), 'BAD_INPUT', /line 1, column 3: "2\.5" is not an integer/, 'a decimal')
  throwsHetmoe(t, () => text('1,2'), 'BAD_INPUT', /"1,2" is not an integer/, 'commas')
  throwsHetmoe(t, () => text('- 1'), 'BAD_INPUT', /"-" is not an integer/, 'a lone minus')
  throwsHetmoe(t, () => text('99999999999'), 'BAD_INPUT', /too large for a token id/, 'overflow')
  throwsHetmoe(t, () => text(' \n '), 'BAD_INPUT', /holds no token ids/, 'empty')
  const dir = tempDir()
  const odd = join(dir, 'odd.i32')
  writeFileSync(odd, Buffer.alloc(10))
  throwsHetmoe(t, () => readTokenFile(odd), 'BAD_INPUT', /10 bytes, not a whole number of int32/, 'truncated .i32')
  throwsHetmoe(t, () => readTokenFile(join(dir, 'missing.txt')), 'BAD_INPUT', /cannot read token file .*missing\.txt/, 'missing file')
  throwsHetmoe(t, () => checkTokenIds(Int32Array.of(1, 2, 100), 100, 'f.txt'), 'BAD_INPUT', /f\.txt: token 2 \(counting from 0\) is 100, outside the model's vocabulary \[0, 100\)/, 'id ≥ vocab')
  throwsHetmoe(t, () => checkTokenIds(Int32Array.of(-4), 100, 'f.txt'), 'BAD_INPUT', /token 0 .* is -4/, 'negative id')
})

t.test('RRE profiles are exactly the routed counts', async (t) => {
  const dir = tempDir()
  writeTestModel(dir, { layers: 3, domains: 3, expertsPerDomain: 5, hiddenSize: 16, ffnSize: 32, vocabSize: 300 })
  const model = readModelFile(dir)
  const tokens = Int32Array.from({ length: 5000 }, (_, i) => Math.floor(300 * Math.pow(((i * 7919) % 5000) / 5000, 3)))
  const routers = rreRouters(model)
  for (const domain of [0, 'd2'] as const) {
    const p = profileFromTokens(model, tokens, domain)
    t.equal(p.tokens, 5000)
    for (const [l, r] of routers.entries()) {
      const sel = allocSelection(15, tokens.length)
      r.route(tokens, domain, sel)
      t.same(p.layers[l].counts, Array.from(sel.counts), `layer ${l}, domain ${domain}`)
    }
  }
  const all = profileFromTokens(model, tokens)
  t.match(all.source, /all domains evenly/)
  const perDomain = [0, 1, 2].map((d) => profileFromTokens(model, tokens, d))
  for (let l = 0; l < 3; l++)
    for (let e = 0; e < 15; e++) {
      const want = perDomain.reduce((s, p) => s + p.layers[l].counts[e], 0) / 3
      if (Math.abs(all.layers[l].counts[e] - want) > 1e-9) t.fail(`layer ${l} expert ${e}`)
    }
  t.ok(profileShares(all).every((s) => Math.abs(s.reduce((a, b) => a + b, 0) - 1) < 1e-12), 'shares sum to 1 per layer (top-1)')
  throwsHetmoe(t, () => profileFromTokens(model, tokens, 'nope'), 'BAD_INPUT', /unknown domain "nope"/, 'unknown domain')
  throwsHetmoe(t, () => profileFromTokens(model, Int32Array.of(300), 0), 'BAD_INPUT', /token 0 is 300/, 'out of range')
})

t.test('gated models: no profile from token ids; LoadTracker records gate counts', async (t) => {
  const dir = tempDir()
  writeTestModel(dir, { layers: 2, experts: 6, topK: 2, hiddenSize: 8, ffnSize: 16, vocabSize: 50 })
  const model = readModelFile(dir)
  throwsHetmoe(t, () => profileFromTokens(model, Int32Array.of(1, 2), undefined), 'BAD_INPUT', /learned gate.*--profile/, 'gated model')
  const tracker = new LoadTracker(model.manifest.name, [6, 6], 2)
  const routers = [0, 1].map((l) => new GateRouter({ weight: model.gateWeight(l), numExperts: 6, hiddenSize: 8, topK: 2, normalize: true }))
  const want = [new Array(6).fill(0), new Array(6).fill(0)]
  let x = 1
  for (let batch = 0; batch < 10; batch++) {
    const T = 1 + batch
    const hidden = Float32Array.from({ length: T * 8 }, () => ((x = (x * 48271) % 2147483647) / 2147483647) - 0.5)
    for (const [l, r] of routers.entries()) {
      const sel = allocSelection(6, T * 2)
      r.route(hidden, T, sel)
      tracker.record(l, sel.counts, T)
      sel.counts.forEach((c, e) => (want[l][e] += c))
    }
  }
  const p = tracker.profile()
  t.equal(p.tokens, 55)
  t.equal(p.topK, 2)
  t.same(p.layers.map((l) => l.counts), want)
  t.ok(profileShares(p).every((s) => Math.abs(s.reduce((a, b) => a + b, 0) - 2) < 1e-12), 'shares sum to k')
  for (const name of ['p.json', 'p.msgpack']) {
    const path = join(dir, name)
    writeDocument(path, p)
    t.same(readProfile(path, model.manifest), p, `${name} round-trips`)
  }
  const other = tempDir()
  writeTestModel(other, { layers: 3, experts: 6, topK: 2, hiddenSize: 8, ffnSize: 16, vocabSize: 50, name: 'other' })
  throwsHetmoe(t, () => readProfile(join(dir, 'p.json'), readModelFile(other).manifest), 'BAD_INPUT', /has 2 layers; model other has 3/, 'wrong model')
  writeFileSync(join(dir, 'junk.json'), '{"hello": 1}')
  throwsHetmoe(t, () => readProfile(join(dir, 'junk.json')), 'BAD_INPUT', /not a hetmoe profile/, 'not a profile')
  tracker.reset()
  throwsHetmoe(t, () => tracker.profile(), 'BAD_INPUT', /no batches/, 'empty tracker')
})

t.test('model directories: clear errors', async (t) => {
  const dir = tempDir()
  throwsHetmoe(t, () => readModelFile(dir), 'BAD_MODEL', /not a hetmoe model: manifest\.msgpack is missing/, 'empty dir')
  writeFileSync(join(dir, 'manifest.msgpack'), Buffer.from([0xc1]))
  throwsHetmoe(t, () => readModelFile(dir), 'BAD_MODEL', /not valid msgpack|not a version-1/, 'junk manifest')
})
