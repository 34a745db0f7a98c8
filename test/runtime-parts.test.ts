import t from 'tap'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { combineTopK } from '../runtime/combine.js'
import { zipfTokens, uniformTokens, seededRandom, randomHidden, fillRepeating } from '../runtime/token-stream.js'
import { parseSize } from '../runtime/size.js'
import { planForModel, readPlanFile } from '../runtime/placement.js'
import { loadModel } from '../experts/model.js'
import { synthModel } from '../experts/synth.js'

t.test('combineTopK sums the k rows of each token and the shared experts, in a fixed order', async (t) => {
  const T = 3
  const K = 2
  const D = 4
  const rows = Float32Array.from({ length: T * K * D }, (_, i) => i)
  const shared = Float32Array.from({ length: 2 * T * D }, (_, i) => 100 * i)
  const out = new Float32Array(T * D).fill(NaN)
  combineTopK(rows, shared, 2, out, T, K, D)
  for (let tok = 0; tok < T; tok++)
    for (let d = 0; d < D; d++) {
      const want = rows[(tok * K) * D + d] + rows[(tok * K + 1) * D + d] + shared[tok * D + d] + shared[(T + tok) * D + d]
      t.equal(out[tok * D + d], want)
    }
  const noShared = new Float32Array(T * D)
  combineTopK(rows, undefined, 0, noShared, T, K, D)
  t.equal(noShared[5], rows[1 * K * D + 1] + rows[(1 * K + 1) * D + 1])
})

t.test('token streams are seeded, in range, and Zipf is skewed', async (t) => {
  t.same(Array.from(zipfTokens(50, 1000, 1.1, 3)), Array.from(zipfTokens(50, 1000, 1.1, 3)), 'same seed, same stream')
  t.notSame(Array.from(zipfTokens(50, 1000, 1.1, 3)), Array.from(zipfTokens(50, 1000, 1.1, 4)))
  const z = zipfTokens(20000, 32000, 1.1, 1)
  const u = uniformTokens(20000, 32000, 1)
  t.ok(z.every((x) => x >= 0 && x < 32000) && u.every((x) => x >= 0 && x < 32000))
  const top = (xs: Int32Array) => {
    const c = new Map<number, number>()
    for (const x of xs) c.set(x, (c.get(x) ?? 0) + 1)
    return Math.max(...c.values()) / xs.length
  }
  t.ok(top(z) > 0.05, `the most frequent Zipf token takes ${(100 * top(z)).toFixed(1)}% of the stream`)
  t.ok(top(u) < 0.002, 'uniform has no such token')
  const r = seededRandom(9)
  t.ok(Array.from({ length: 1000 }, r).every((x) => x >= 0 && x < 1))
})

t.test('random hidden states written in place are the ones a fresh array gets', async (t) => {
  const fresh = randomHidden(5, 8, 11)
  const buf = new Float32Array(64).fill(NaN)
  const got = randomHidden(5, 8, 11, buf)
  t.equal(got.buffer, buf.buffer, 'the caller\'s array')
  t.same(Array.from(buf.subarray(0, 40)), Array.from(fresh), 'same values from the same seed')
  t.ok(buf.subarray(40).every(Number.isNaN), 'nothing written past T × D')
  t.throws(() => randomHidden(5, 8, 11, new Float32Array(39)), /fewer than 5 × 8/)
})

t.test('fillRepeating writes the scaled block over and over, to the last value', async (t) => {
  const block = randomHidden(3, 5, 4)
  const out = new Float32Array(37).fill(Number.NaN)
  fillRepeating(out, block, 1.5)
  for (let i = 0; i < out.length; i++) t.equal(out[i], Math.fround(1.5 * block[i % block.length]), `value ${i}`)
  const short = new Float32Array(7).fill(Number.NaN) // shorter than the block: its first values
  fillRepeating(short, block, 0.5)
  t.same(Array.from(short), Array.from(block.subarray(0, 7), (v) => Math.fround(0.5 * v)))
})

t.test('sizes', async (t) => {
  t.equal(parseSize('20GiB'), 20 * 2 ** 30)
  t.equal(parseSize('512 MiB'), 512 * 2 ** 20)
  t.equal(parseSize('1.5g'), 1.5 * 2 ** 30)
  t.equal(parseSize('4096'), 4096)
  t.equal(parseSize('20 parsecs'), undefined)
})

t.test('placement without a GPU is CPU-only; plan files are checked against the model', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'hetmoe-place-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  await synthModel({ preset: 'tiny', out: join(dir, 'm') })
  const m = await loadModel(join(dir, 'm'))
  t.teardown(() => m.close())
  const off = await planForModel(m, { gpu: 'off', batch: 1 })
  t.equal(off.plan, undefined)
  t.match(off.summary, /CPU only/)
  const good = join(dir, 'plan.json')
  writeFileSync(good, JSON.stringify({ format: 'hetmoe-plan', version: 1, model: m.manifest.name, layers: [{ layer: 0, gpuExperts: [1, 2] }] }))
  t.same(readPlanFile(good, m), { layers: [{ layer: 0, gpuExperts: [1, 2] }] })
  const share = m.manifest.layers.map((l) => l.experts.map((_, e) => (e === 1 ? 0.9 : 0.1 / (l.experts.length - 1))))
  const withShare = join(dir, 'share.json')
  writeFileSync(withShare, JSON.stringify({ format: 'hetmoe-plan', version: 1, model: m.manifest.name, share, batchTokens: 16, layers: [{ layer: 0, gpuExperts: [1] }] }))
  t.same(readPlanFile(withShare, m), { layers: [{ layer: 0, gpuExperts: [1] }], share, batchTokens: 16 }, 'the load it was planned for comes along (re-placement measures drift from it)')
  const other = join(dir, 'other.json')
  writeFileSync(other, JSON.stringify({ format: 'hetmoe-plan', version: 1, model: 'mixtral', layers: [] }))
  t.throws(() => readPlanFile(other, m), /planned for model "mixtral"/)
  const junk = join(dir, 'junk.json')
  writeFileSync(junk, '{"hello": 1}')
  t.throws(() => readPlanFile(junk, m), /is not a hetmoe plan/)
})
