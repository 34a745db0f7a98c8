import t from 'tap'
import { GateRouter } from '../scheduler/route-gate.js'
import { allocSelection, type Selection } from '../scheduler/selection.js'
import { execFileSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { throwsHetmoe } from './helpers/expect-error.js'
import { gateRouteHash } from './helpers/gate-route-hash.js'

function lcg(seed: number): () => number {
  let x = seed >>> 0
  return () => {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0
    return x / 2 ** 32 - 0.5
  }
}

/** The straightforward float64 reference: per token, softmax, sort by (−p, index), take k. */
function reference(w: Float32Array, hidden: Float32Array, T: number, E: number, D: number, K: number, normalize: boolean) {
  const picks: { expert: number; p: number }[][] = []
  for (let t = 0; t < T; t++) {
    const logits = Array.from({ length: E }, (_, e) => {
      let s = 0
      for (let j = 0; j < D; j++) s += w[e * D + j] * hidden[t * D + j]
      return s
    })
    const m = Math.max(...logits)
    const z = logits.reduce((s, l) => s + Math.exp(l - m), 0)
    const p = logits.map((l) => Math.exp(l - m) / z)
    const top = p.map((v, e) => ({ expert: e, p: v })).sort((a, b) => b.p - a.p || a.expert - b.expert).slice(0, K)
    const sum = top.reduce((s, x) => s + x.p, 0)
    picks.push(normalize ? top.map((x) => ({ expert: x.expert, p: x.p / sum })) : top)
  }
  return picks
}

interface Asserts {
  equal(a: unknown, b: unknown, m: string): unknown
  ok(v: unknown, m: string): unknown
}

function check(t: Asserts, sel: Selection, picks: { expert: number; p: number }[][], E: number, K: number): void {
  let mismatches = 0
  let worst = 0
  let rows = 0
  for (let e = 0; e < E; e++) {
    const want: [number, number, number][] = []
    picks.forEach((ps, tok) => ps.forEach((x, slot) => x.expert === e && want.push([tok, tok * K + slot, x.p])))
    const n = sel.offsets[e + 1] - sel.offsets[e]
    if (n !== want.length || sel.counts[e] !== n) mismatches++
    for (let i = 0; i < Math.min(n, want.length); i++) {
      const at = sel.offsets[e] + i
      if (sel.tokenRows[at] !== want[i][0] || sel.outRows[at] !== want[i][1]) mismatches++
      worst = Math.max(worst, Math.abs(sel.scales[at] - want[i][2]))
    }
    rows += n
  }
  t.equal(mismatches, 0, 'same experts, token rows (ascending) and output rows token·K + slot')
  t.equal(rows, picks.length * K, 'T·K routed rows')
  t.ok(worst < 1e-6, `weights match the float64 reference within fp32 rounding (worst ${worst.toExponential(2)})`)
}

t.test('top-k matches a float64 reference', async (t) => {
  for (const [E, D, K, T, normalize] of [[8, 64, 2, 50, true], [64, 32, 6, 40, false], [5, 17, 5, 9, true], [16, 128, 1, 30, false]] as const) {
    const rnd = lcg(E * 1000 + D)
    const w = Float32Array.from({ length: E * D }, rnd)
    const hidden = Float32Array.from({ length: T * D }, () => 4 * rnd())
    const router = new GateRouter({ weight: w, numExperts: E, hiddenSize: D, topK: K, normalize })
    const sel = allocSelection(E, T * K)
    t.equal(router.route(hidden, T, sel), T * K)
    check(t, sel, reference(w, hidden, T, E, D, K, normalize), E, K)
    if (normalize)
      for (let tok = 0; tok < T; tok++) {
        let s = 0
        for (let i = 0; i < T * K; i++) if (sel.outRows[i] >= tok * K && sel.outRows[i] < (tok + 1) * K) s += sel.scales[i]
        if (Math.abs(s - 1) > 1e-6) t.fail(`token ${tok}: weights sum to ${s}`)
      }
  }
})

t.test('ties go to the lower expert index; routing is deterministic', async (t) => {
  const E = 6, D = 4, K = 3
  // Experts 1, 3 and 4 share one gate row, 0 and 5 another: their logits tie exactly.
  const rows = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0]]
  const router = new GateRouter({ weight: Float32Array.from(rows.flat()), numExperts: E, hiddenSize: D, topK: K, normalize: true })
  const hidden = Float32Array.of(0, 2, 0, 0, /* token 1 */ 3, 0, 0, 0)
  const a = allocSelection(E, 6)
  router.route(hidden, 2, a)
  const chosen = (tok: number) => {
    const out: number[] = []
    for (let e = 0; e < E; e++) for (let i = a.offsets[e]; i < a.offsets[e + 1]; i++) if (a.tokenRows[i] === tok) out[a.outRows[i] - tok * K] = e
    return out
  }
  t.same(chosen(0), [1, 3, 4], 'token 0: the three tied experts, lowest index first')
  t.same(chosen(1), [0, 5, 1], 'token 1: 0 before 5, then the best of the rest by lower index')
  const b = allocSelection(E, 6)
  router.route(hidden, 2, b)
  for (const k of ['counts', 'offsets', 'tokenRows', 'outRows', 'scales'] as const) t.same(Array.from(a[k]), Array.from(b[k]), k)
})

t.test('NaN and Inf hidden states and bad options are refused', async (t) => {
  const router = new GateRouter({ weight: new Float32Array(4 * 8), numExperts: 4, hiddenSize: 8, topK: 2, normalize: false })
  const sel = allocSelection(4, 8)
  sel.counts.fill(-1)
  for (const [v, name] of [[NaN, 'NaN'], [Infinity, 'Infinity'], [-Infinity, '-Infinity']] as const) {
    const h = new Float32Array(4 * 8)
    h[2 * 8 + 5] = v
    throwsHetmoe(t, () => router.route(h, 4, sel), 'BAD_INPUT', new RegExp(`row 2 \\(column 5\\) is ${name}`), `${name} in row 2`)
  }
  t.same(Array.from(sel.counts), [-1, -1, -1, -1], 'nothing written')
  throwsHetmoe(t, () => router.route(new Float32Array(8), 2, sel), 'BAD_INPUT', /hold 8 values; 2 tokens × 8 need 16/, 'short hidden')
  throwsHetmoe(t, () => router.route(new Float32Array(5 * 8), 5, sel), 'BAD_INPUT', /room for 8 routed rows; this batch routes 10/, 'small selection')
  throwsHetmoe(t, () => new GateRouter({ weight: new Float32Array(4 * 8), numExperts: 4, hiddenSize: 8, topK: 5, normalize: false }), 'BAD_OPTION', /topK/, 'topK > E')
  throwsHetmoe(t, () => new GateRouter({ weight: new Float32Array(3), numExperts: 4, hiddenSize: 8, topK: 2, normalize: false }), 'BAD_MODEL', /fp32 \[4 × 8\]/, 'wrong weight size')
})

t.test('gate routing overhead at decode (µs, median)', async (t) => {
  for (const [name, E, D, K] of [['mixtral', 8, 4096, 2], ['fine', 64, 2048, 6]] as const) {
    const rnd = lcg(E)
    const router = new GateRouter({ weight: Float32Array.from({ length: E * D }, rnd), numExperts: E, hiddenSize: D, topK: K, normalize: true })
    for (const T of [1, 16]) {
      const hidden = Float32Array.from({ length: T * D }, rnd)
      const sel = allocSelection(E, T * K)
      for (let i = 0; i < 300; i++) router.route(hidden, T, sel)
      const times: number[] = []
      for (let i = 0; i < 101; i++) {
        const s = process.hrtime.bigint()
        router.route(hidden, T, sel)
        times.push(Number(process.hrtime.bigint() - s) / 1000)
      }
      times.sort((a, b) => a - b)
      t.comment(`gate route ${name} (E ${E}, D ${D}, top-${K}), ${T} token(s): median ${times[50].toFixed(1)} µs`)
      const logits = Float32Array.from({ length: T * E }, rnd)
      for (let i = 0; i < 3000; i++) router.routeLogits(logits, T, sel)
      const lt: number[] = []
      for (let i = 0; i < 101; i++) {
        const s = process.hrtime.bigint()
        for (let k = 0; k < 10; k++) router.routeLogits(logits, T, sel)
        lt.push(Number(process.hrtime.bigint() - s) / 10000)
      }
      lt.sort((a, b) => a - b)
      t.comment(`  routeLogits (top-k + selection only): median ${lt[50].toFixed(2)} µs`)
      if (T === 1) t.ok(lt[50] < 30, 'top-k and selection fit the 30 µs per-layer budget at decode')
    }
  }
})

t.test('routeLogits (logits from a native GEMM) selects exactly as route()', async (t) => {
  const E = 12, D = 40, K = 3, T = 25
  const rnd = lcg(5)
  const w = Float32Array.from({ length: E * D }, rnd)
  const hidden = Float32Array.from({ length: T * D }, rnd)
  const router = new GateRouter({ weight: w, numExperts: E, hiddenSize: D, topK: K, normalize: false })
  const logits = new Float64Array(T * E)
  for (let tok = 0; tok < T; tok++)
    for (let e = 0; e < E; e++) for (let j = 0; j < D; j++) logits[tok * E + e] += w[e * D + j] * hidden[tok * D + j]
  const a = allocSelection(E, T * K)
  const b = allocSelection(E, T * K)
  router.route(hidden, T, a)
  router.routeLogits(logits, T, b)
  t.same(Array.from(a.tokenRows), Array.from(b.tokenRows))
  t.same(Array.from(a.outRows), Array.from(b.outRows))
  logits[3 * E + 7] = NaN
  throwsHetmoe(t, () => router.routeLogits(logits, T, b), 'BAD_INPUT', /token 3, expert 7 is NaN/, 'NaN logit')
})

t.test('gate routes are bit-identical across processes', async (t) => {
  const helper = fileURLToPath(new URL('./helpers/gate-route-hash.js', import.meta.url))
  const child = execFileSync(process.execPath, [helper, '64', '512', '6', '32'], { encoding: 'utf8' }).trim()
  t.equal(child, gateRouteHash(64, 512, 6, 32))
})

/** The selection as it was computed before the one-pass top-k (picking the lowest-index maximum k
 *  times, then the same float64 weight arithmetic): routing must not change by a bit. */
function selectByRepeatedMax(logits: Float64Array, T: number, E: number, K: number, normalize: boolean): { chosen: Int32Array; weight: Float32Array } {
  const chosen = new Int32Array(T * K)
  const weight = new Float64Array(T * K)
  for (let t = 0; t < T; t++) {
    const l = t * E
    const taken = new Uint8Array(E)
    let max = 0
    let kept = 0
    for (let k = 0; k < K; k++) {
      let best = -1
      let bestLogit = -Infinity
      for (let e = 0; e < E; e++)
        if (taken[e] === 0 && (best < 0 || logits[l + e] > bestLogit)) {
          best = e
          bestLogit = logits[l + e]
        }
      taken[best] = 1
      if (k === 0) max = bestLogit
      const p = k === 0 ? 1 : Math.exp(bestLogit - max)
      chosen[t * K + k] = best
      weight[t * K + k] = p
      kept += p
    }
    let denom = kept
    if (!normalize) {
      denom = 0
      for (let e = 0; e < E; e++) denom += Math.exp(logits[l + e] - max)
    }
    for (let k = 0; k < K; k++) weight[t * K + k] /= denom
  }
  return { chosen, weight: Float32Array.from(weight) }
}

t.test('routeLogits: the same experts, order and weight bits as picking the maximum k times (ties included)', async (t) => {
  const rnd = lcg(11)
  let cases = 0
  for (const E of [1, 2, 5, 8, 13, 64])
    for (const K of [1, 2, 3, 6, E])
      for (const normalize of [true, false])
        for (const ties of [false, true]) {
          if (K > E) continue
          const T = 37
          // With ties: logits drawn from a few values (±0 among them), so many are exactly equal.
          const logits = Float64Array.from({ length: T * E }, () => (ties ? [0, -0, 1.5, -2, 1.5][Math.floor((rnd() + 0.5) * 5)] : 8 * rnd()))
          const router = new GateRouter({ weight: new Float32Array(E), numExperts: E, hiddenSize: 1, topK: K, normalize })
          const sel = allocSelection(E, T * K)
          router.routeLogits(logits, T, sel)
          const want = selectByRepeatedMax(logits, T, E, K, normalize)
          let bad = 0
          for (let i = 0; i < T * K; i++) {
            const slot = sel.outRows[i]
            if (sel.tokenRows[i] !== Math.floor(slot / K)) bad++
            const e = sel.offsets.findIndex((o, j) => j < E && i >= o && i < sel.offsets[j + 1])
            if (e !== want.chosen[slot] || !Object.is(sel.scales[i], want.weight[slot])) bad++
          }
          if (bad) t.fail(`E=${E} K=${K} normalize=${normalize} ties=${ties}: ${bad} rows differ`)
          cases++
        }
  t.pass(`${cases} cases bit for bit`)
})
