import t from 'tap'
import { join } from 'node:path'
import { loadModel } from '../experts/model.js'
import { denseExpert, expertForwardRef, gateRoutes, gelu, layerForwardRef, silu } from '../experts/reference.js'
import { makeModel, MICRO, MICRO_GATED, MICRO_GELU, tempDir } from './helpers/models.js'
import { writeDenseModel } from './helpers/dense-model.js'
import { testRng } from './helpers/safetensors-writer.js'

const f32 = (...v: number[]) => Float32Array.from(v)

t.test('activations', async (t) => {
  t.equal(silu(0), 0)
  t.equal(silu(1), 1 / (1 + Math.exp(-1)))
  t.equal(gelu(0), 0)
  t.ok(Math.abs(gelu(1) - 0.8411919906082768) < 1e-15, 'gelu(1), tanh approximation')
  t.ok(Math.abs(gelu(-1) - -0.15880800939172324) < 1e-15)
  t.ok(Math.abs(gelu(3) - 2.996362607918227) < 1e-12)
})

t.test('a hand-computed SwiGLU and GeLU expert', async (t) => {
  // gate = I, up = diag(2, 3), down = [[1, 1], [0, 1]], x = (1, -1)
  const e = { ffn: 'swiglu' as const, hidden: 2, inner: 2, gate: f32(1, 0, 0, 1), up: f32(2, 0, 0, 3), down: f32(1, 1, 0, 1) }
  const h0 = (1 / (1 + Math.exp(-1))) * 2 // silu(1) · 2
  const h1 = (-1 / (1 + Math.exp(1))) * -3 // silu(-1) · -3
  const y = expertForwardRef(e, f32(1, -1))
  t.same(Array.from(y), [h0 + h1, h1])
  const g = { ffn: 'gelu' as const, hidden: 2, inner: 2, up: f32(2, 0, 0, 3), down: f32(1, 1, 0, 1) }
  const yg = expertForwardRef(g, f32(1, -1, 0.5, 0))
  t.same(Array.from(yg), [gelu(2) + gelu(-3), gelu(-3), gelu(1) + gelu(0), gelu(0)], 'two tokens')
  t.throws(() => expertForwardRef(e, f32(1, 2, 3)), { code: 'BAD_INPUT' })
})

t.test('model experts: stored = decoded weights, batching does not change results', async (t) => {
  const dir = tempDir(t)
  for (const preset of [MICRO, MICRO_GELU]) {
    for (const format of ['dense', '75%'] as const) {
      const m = await loadModel(await makeModel(dir, preset, { format }))
      const D = 32
      const r = testRng(5)
      // 6 tokens: one block of four and two single ones in the reference's matmul.
      const x = Float32Array.from({ length: 6 * D }, () => r.normal())
      const y = expertForwardRef(m, 1, 4, x)
      t.equal(y.length, 6 * D)
      t.ok(y.every(Number.isFinite) && y.some((v) => Math.abs(v) > 1e-3), `${preset.name} ${format}: finite, not zero`)
      const e = denseExpert(m, 1, 4)
      t.equal(e.gate !== undefined, preset.ffn === 'swiglu')
      t.same(Array.from(expertForwardRef(e, x)), Array.from(y), 'same as from decoded matrices')
      for (let tok = 0; tok < 6; tok++) {
        t.same(Array.from(expertForwardRef(m, 1, 4, x.subarray(tok * D, tok * D + D))), Array.from(y.subarray(tok * D, tok * D + D)), `token ${tok} alone`)
      }
      m.close()
    }
  }
})

t.test('gate routing: softmax top-k, ties to the lower index, renormalisation', async (t) => {
  const D = 2
  // logits for x = (1, 0): e0: 1, e1: 3, e2: 3, e3: 0
  const gate = f32(1, 0, 3, 0, 3, 5, 0, 1)
  const x = f32(1, 0)
  const r = gateRoutes(gate, 4, x, D, 2, false)
  t.same(Array.from(r.experts), [1, 2], 'tie between 1 and 2: both kept, lower first')
  const z = Math.exp(1) + 2 * Math.exp(3) + 1
  t.ok(Math.abs(r.weights[0] - Math.exp(3) / z) < 1e-15 && Math.abs(r.weights[1] - Math.exp(3) / z) < 1e-15)
  const r3 = gateRoutes(gate, 4, x, D, 3, true)
  t.same(Array.from(r3.experts), [1, 2, 0])
  t.ok(Math.abs(r3.weights.reduce((a, b) => a + b, 0) - 1) < 1e-15, 'renormalised to 1')
  const tie = gateRoutes(new Float32Array(8), 4, x, D, 2, false)
  t.same(Array.from(tie.experts), [0, 1], 'all equal: the lowest indices')
  t.same(Array.from(tie.weights), [0.25, 0.25])
})

t.test('layerForwardRef: gated top-k with shared experts and a shared gate, by hand', async (t) => {
  const dir = tempDir(t)
  const D = 16
  const F = 16
  const r = testRng(9)
  const mat = (n: number) => Float32Array.from({ length: n }, () => r.normal() / 4)
  const ex = () => ({ gate: mat(F * D), up: mat(F * D), down: mat(D * F) })
  const experts = [ex(), ex(), ex(), ex()]
  const shared = [{ ...ex() }, { gate: mat(32 * D), up: mat(32 * D), down: mat(D * 32), inner: 32 }]
  const gw = mat(4 * D)
  const sg = mat(D)
  const out = join(dir, 'm')
  await writeDenseModel(out, { hidden: D, inner: F, ffn: 'swiglu', layers: [{ experts, shared, sharedGate: sg, routing: { kind: 'gate', weight: gw, topK: 2, normalize: true } }] })
  const m = await loadModel(out)
  const T = 5
  const x = Float32Array.from({ length: T * D }, () => r.normal())
  const { out: y, routes } = layerForwardRef(m, 0, { x })
  const dense = (e: { gate: Float32Array; up: Float32Array; down: Float32Array; inner?: number }) => ({ ffn: 'swiglu' as const, hidden: D, inner: e.inner ?? F, ...e })
  for (let tok = 0; tok < T; tok++) {
    const xt = x.subarray(tok * D, tok * D + D)
    const logits = Array.from({ length: 4 }, (_, e) => gw.subarray(e * D, e * D + D).reduce((s, w, i) => s + w * xt[i], 0))
    const p = logits.map((l) => Math.exp(l))
    const order = [0, 1, 2, 3].sort((a, b) => p[b] - p[a] || a - b).slice(0, 2)
    t.same(Array.from(routes.experts.subarray(tok * 2, tok * 2 + 2)), order, `token ${tok}: top-2`)
    const norm = p[order[0]] + p[order[1]]
    const expect = new Float64Array(D)
    for (const e of order) expertForwardRef(dense(experts[e]), xt).forEach((v, i) => (expect[i] += (p[e] / norm) * v))
    const s = 1 / (1 + Math.exp(-sg.reduce((acc, w, i) => acc + w * xt[i], 0)))
    for (const se of shared) expertForwardRef(dense(se), xt).forEach((v, i) => (expect[i] += s * v))
    const err = Math.max(...Array.from(expect, (v, i) => Math.abs(v - y[tok * D + i])))
    t.ok(err < 1e-12, `token ${tok}: matches the hand-rolled layer (err ${err.toExponential(1)})`)
  }
  m.close()
})

t.test('layerForwardRef: RRE routes by the table, per domain', async (t) => {
  const dir = tempDir(t)
  const m = await loadModel(await makeModel(dir, MICRO))
  const D = 32
  const r = testRng(3)
  const tokenIds = [0, 7, 49, 7, 23]
  const x = Float32Array.from({ length: tokenIds.length * D }, () => r.normal())
  const table = m.rreTable(1)
  for (const [d, name] of ['general', 'code'].entries()) {
    const { out, routes } = layerForwardRef(m, 1, { x, tokenIds, domain: name })
    t.same(Array.from(routes.experts), tokenIds.map((v) => 3 * d + table[d * 50 + v]), `${name}: expert = firstExpert + table[d][token]`)
    t.same(Array.from(routes.weights), [1, 1, 1, 1, 1])
    tokenIds.forEach((_, tok) => {
      const y = expertForwardRef(m, 1, routes.experts[tok], x.subarray(tok * D, tok * D + D))
      t.same(Array.from(out.subarray(tok * D, tok * D + D)), Array.from(y), `${name} token ${tok}`)
    })
    t.same(Array.from(layerForwardRef(m, 1, { x, tokenIds, domain: d }).out), Array.from(out), 'domain by index')
  }
  t.throws(() => layerForwardRef(m, 1, { x, tokenIds, domain: 'poetry' }), { code: 'BAD_INPUT', message: /unknown domain "poetry"/ })
  t.throws(() => layerForwardRef(m, 1, { x, tokenIds: [0, 1, 2, 3, 50], domain: 0 }), { code: 'BAD_INPUT', message: /token id 50/ })
  m.close()
  const g = await loadModel(await makeModel(dir, MICRO_GATED))
  const { routes } = layerForwardRef(g, 0, { x })
  t.equal(routes.k, 2)
  t.ok(routes.experts.every((e) => e >= 0 && e < 5))
  g.close()
})
