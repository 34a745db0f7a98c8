// The native router arithmetic (native/cpu/router_math.h) against the JavaScript it replaces: gate
// selections bit-for-bit equal to GateRouter.route on every ISA the machine runs, the native top-k
// selection and its exp against the JavaScript's, the finiteness scan, and the combine against a
// float64 sum.
import t from 'tap'
import { GateRouter } from '../scheduler/route-gate.js'
import { allocSelection } from '../scheduler/selection.js'
import { native } from '../runtime/native.js'
import { combineTopK } from '../runtime/combine.js'
import { seededRandom } from '../runtime/token-stream.js'

const seed = Number(process.env.HETMOE_TEST_SEED ?? Date.now() % 1e9)
t.comment(`seed ${seed}`)
const rand = seededRandom(seed)
const randn = (n: number, scale = 1) => Float32Array.from({ length: n }, () => (rand() - 0.5) * 2 * scale)

const levels = native().cpuIsa().levels.filter((l) => l.available).map((l) => l.name)
t.comment(`ISA levels here: ${levels.join(', ')}`)

t.test('native gate logits route exactly as the JavaScript router (every ISA level this CPU runs)', async (t) => {
  const isaBefore = process.env.HETMOE_ISA
  t.teardown(() => {
    if (isaBefore === undefined) delete process.env.HETMOE_ISA
    else process.env.HETMOE_ISA = isaBefore
  })
  // Shapes cover every register tile and its edges (tokens 1-4 and beyond, experts 1-8 and beyond,
  // D with and without a tail past 8⌊D/8⌋, D < 8).
  const shapes = [[1, 64, 8, 2], [3, 67, 8, 2], [5, 130, 64, 6], [17, 4096, 8, 2], [9, 2050, 16, 4], [2, 7, 3, 1], [4, 8, 5, 2], [7, 101, 13, 3], [16, 2048, 64, 6], [6, 263, 7, 7], [1, 2048, 64, 6]]
  for (const isa of ['', ...levels]) {
    if (isa) process.env.HETMOE_ISA = isa
    else delete process.env.HETMOE_ISA
    for (const [T, D, E, K] of shapes) {
      const weight = randn(E * D, 0.05)
      const hidden = randn(T * D)
      const router = new GateRouter({ weight, numExperts: E, hiddenSize: D, topK: K, normalize: K === 2 })
      const js = allocSelection(E, T * K)
      router.route(hidden, T, js)
      const logits = new Float64Array(T * E).fill(NaN)
      t.equal(native().gateLogits(hidden, weight, T, D, E, logits), -1)
      const jsLogits = router.logits(hidden, T, new Float64Array(T * E))
      t.ok(logits.every((x, i) => Object.is(x, jsLogits[i])), `T=${T} D=${D} E=${E} ${isa || 'best ISA'}: logits bit for bit`)
      const nat = allocSelection(E, T * K)
      router.routeLogits(logits, T, nat)
      const same = (['counts', 'tokenRows', 'outRows', 'scales'] as const).every((k) => Buffer.from(js[k].buffer, js[k].byteOffset, js[k].byteLength).equals(Buffer.from(nat[k].buffer, nat[k].byteOffset, nat[k].byteLength)))
      t.ok(same, `T=${T} D=${D} E=${E} K=${K} ${isa || 'best ISA'}: same experts, rows and weights, bit for bit`)
    }
  }
})

t.test('native top-k selection: the same experts, rows and weight bits as GateRouter.routeLogits', async (t) => {
  // Logits drawn from a few values make ties common (ties go to the lower expert index); wide ones
  // push exp's argument down to where it underflows.
  const bytes = (a: ArrayBufferView) => Buffer.from(a.buffer, a.byteOffset, a.byteLength)
  const isaBefore = process.env.HETMOE_ISA
  t.teardown(() => {
    if (isaBefore === undefined) delete process.env.HETMOE_ISA
    else process.env.HETMOE_ISA = isaBefore
  })
  let cases = 0
  for (const isa of levels) for (const [T, E, K] of [[1, 8, 2], [16, 8, 2], [16, 64, 6], [5, 3, 3], [33, 128, 8], [4, 1, 1], [64, 256, 8], [7, 13, 1]])
    for (const normalize of [false, true])
      for (const draw of ['normal', 'ties', 'wide'] as const) {
        const logits = Float64Array.from({ length: T * E }, () => (draw === 'ties' ? Math.floor(rand() * 4) : draw === 'wide' ? (rand() - 0.5) * 2000 : (rand() - 0.5) * 8))
        const router = new GateRouter({ weight: new Float32Array(E), numExperts: E, hiddenSize: 1, topK: K, normalize })
        const js = allocSelection(E, T * K)
        router.routeLogits(logits, T, js)
        const nat = allocSelection(E, T * K)
        nat.scales.fill(NaN)
        nat.tokenRows.fill(-1)
        process.env.HETMOE_ISA = isa // the softmax denominator's exps run at this level
        t.equal(native().gateSelect(logits, T, E, K, normalize, nat.counts, nat.offsets, nat.tokenRows, nat.outRows, nat.scales), T * K)
        const differ = (['counts', 'offsets', 'tokenRows', 'outRows', 'scales'] as const).filter((k) => !bytes(js[k]).equals(bytes(nat[k])))
        if (differ.length) t.fail(`${isa}: T=${T} E=${E} K=${K} normalize=${normalize} ${draw}: ${differ.join(', ')} differ`)
        cases++
      }
  t.pass(`${cases} selections bit for bit (${levels.join(', ')})`)
  t.throws(() => native().gateSelect(new Float64Array(8), 1, 8, 9, true, new Int32Array(8), new Int32Array(9), new Int32Array(9), new Int32Array(9), new Float32Array(9)), /K must be in \[1, E\]/)
  t.throws(() => native().gateSelect(new Float64Array(8), 1, 8, 2, true, new Int32Array(8), new Int32Array(9), new Int32Array(1), new Int32Array(2), new Float32Array(2)), /tokenRows holds 1 values; 2 needed/)
})

t.test('the native exp is fdlibm\'s: the same doubles as Math.exp (V8 runs fdlibm) at every ISA level, so no libm decides a weight', async (t) => {
  const n = 1 << 20
  // Arguments ≤ 0 run in the vector lanes (a softmax's l − max); others go to the scalar code.
  const nonPositive = Float64Array.from({ length: n }, (_, i) => [-rand() * 760, -rand() * 2, -rand() * rand() * 1e-7, -rand() * 1e-6][i % 4])
  const special = [0, -0, -1, -Infinity, -709.78, -709.79, -745.13, -745.14, -708.4, -(2 ** -28), -(2 ** -29), -0.5 * Math.LN2, -1.5 * Math.LN2, -Number.MIN_VALUE, -Number.MAX_VALUE, -1021 * Math.LN2, -1022 * Math.LN2, -1030 * Math.LN2]
  const mixed = [1, Infinity, NaN, 709.78, 709.79, 2 ** -28, 0.5 * Math.LN2, 1.5 * Math.LN2, ...Array.from({ length: 4096 }, () => (rand() - 0.5) * 1420)]
  const all = Float64Array.from([...special, ...nonPositive, ...mixed])
  for (const isa of levels) {
    const out = new Float64Array(all.length)
    native().fdlibmExp(all, out, isa)
    const bad = all.findIndex((v, i) => !Object.is(out[i], Math.exp(v)))
    t.equal(bad, -1, bad < 0 ? `${isa}: ${all.length} arguments, every result the same double` : `${isa}: exp(${all[bad]}) = ${out[bad]}, Math.exp gives ${Math.exp(all[bad])}`)
  }
})

t.test('the summation order is the documented one (eight lanes, tail into lane 0, fixed tree)', async (t) => {
  // Values where the order shows: 2^60 in lane 0 and -2^60 in lane 4 meet only in the final tree,
  // after the small terms of lane 0 (j = 8, and the tail j = 16) and lane 1 were absorbed. Four lanes
  // (j mod 4) would cancel them first and give 4.5; one chain would give 4.5 too.
  const D = 17
  const w = new Float32Array(D).fill(1)
  const x = new Float32Array(D)
  x[0] = 2 ** 60
  x[4] = -(2 ** 60)
  x[8] = 1
  x[1] = 3
  x[16] = 0.5
  const a = new Float64Array(8)
  for (let j = 0; j < 16; j++) a[j % 8] += w[j] * x[j]
  a[0] += w[16] * x[16]
  const ref = a[0] + a[1] + (a[2] + a[3]) + (a[4] + a[5] + (a[6] + a[7]))
  t.equal(ref, 0)
  const router = new GateRouter({ weight: w, numExperts: 1, hiddenSize: D, topK: 1, normalize: false })
  t.equal(router.logits(x, 1, new Float64Array(1))[0], ref, 'JavaScript')
  const isaBefore = process.env.HETMOE_ISA
  t.teardown(() => {
    if (isaBefore === undefined) delete process.env.HETMOE_ISA
    else process.env.HETMOE_ISA = isaBefore
  })
  for (const isa of levels) {
    process.env.HETMOE_ISA = isa
    const out = new Float64Array(1)
    native().gateLogits(x, w, 1, D, 1, out)
    t.equal(out[0], ref, isa)
  }
})

t.test('a non-finite hidden value is found (the gate checks its logits, then scans for the index)', async (t) => {
  const D = 96
  const T = 4
  for (const isa of ['', ...levels]) {
    if (isa) process.env.HETMOE_ISA = isa
    else delete process.env.HETMOE_ISA
    for (const bad of [NaN, Infinity, -Infinity]) {
      const hidden = randn(T * D)
      const at = Math.floor(rand() * T * D)
      hidden[at] = bad
      if (at + 5 < T * D) hidden[at + 5] = NaN
      t.equal(native().firstNonFinite(hidden, T * D), at, `${bad} at ${at}`)
      // Zero weights where the bad value is: Inf·0 is NaN, so its logits are still not finite.
      const W = randn(2 * D)
      W[at % D] = 0
      W[D + (at % D)] = 0
      t.equal(native().gateLogits(hidden, W, T, D, 2, new Float64Array(T * 2)), at, `${isa || 'best ISA'}: gate finds ${bad} at ${at}`)
    }
    // The largest finite values give finite float64 logits: no false alarm.
    const huge = new Float32Array(T * D).map((_, i) => (i % 3 ? 3.4e38 : -3.4e38))
    t.equal(native().gateLogits(huge, new Float32Array(2 * D).fill(3.4e38), T, D, 2, new Float64Array(T * 2)), -1, 'finite extremes pass')
    // Finite hidden states and a non-finite gate weight: -3, not a hidden index.
    const W = randn(2 * D)
    W[D + 7] = NaN
    t.equal(native().gateLogits(randn(T * D), W, T, D, 2, new Float64Array(T * 2)), -3, 'a NaN gate weight')
  }
  delete process.env.HETMOE_ISA
  t.equal(native().firstNonFinite(randn(5000), 5000), -1)
  t.equal(native().firstNonFinite(Float32Array.from([1, 2, NaN]), 2), -1, 'only the first n values are read')
  t.throws(() => native().gateLogits(randn(10), randn(10), 1, 10, 2, new Float64Array(2)), /gate weight holds 10 values; 20 needed/)
})

t.test('combine: top-k rows, shared experts and their gate against a float64 sum', async (t) => {
  for (const [T, K, D, S] of [[1, 1, 16, 0], [3, 2, 100, 0], [5, 6, 64, 1], [4, 2, 33, 2]]) {
    const rows = randn(T * K * D)
    const shared = S ? randn(S * T * D) : undefined
    const g = S ? Float32Array.from({ length: T }, () => rand()) : undefined
    const out = new Float32Array(T * D).fill(NaN)
    combineTopK(rows, shared, S, out, T, K, D, g)
    let num = 0
    let den = 0
    for (let tt = 0; tt < T; tt++)
      for (let d = 0; d < D; d++) {
        let ref = 0
        for (let k = 0; k < K; k++) ref += rows[(tt * K + k) * D + d]
        let sh = 0
        for (let s = 0; s < S; s++) sh += shared![(s * T + tt) * D + d]
        ref += (g ? g[tt] : 1) * sh
        num += (out[tt * D + d] - ref) ** 2
        den += ref ** 2
      }
    t.ok(Math.sqrt(num / den) < 1e-6, `T=${T} K=${K} D=${D} S=${S}: rel err ${Math.sqrt(num / den).toExponential(2)}`)
  }
})
