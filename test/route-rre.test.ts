import t from 'tap'
import { execFileSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { RreRouter } from '../scheduler/route-rre.js'
import { makeRreTable } from '../experts/rre-table.js'
import { allocSelection, selectionBytes, selectionViews } from '../scheduler/selection.js'
import { throwsHetmoe } from './helpers/expect-error.js'
import { hashView } from './helpers/hash.js'

const domains = [
  { name: 'code', firstExpert: 0, numExperts: 4 },
  { name: 'chat', firstExpert: 4, numExperts: 3 },
]

t.test('makeRreTable draws each token uniformly within its group', async (t) => {
  const V = 48000
  const table = makeRreTable(99, [16, 5], V)
  for (const [d, n] of [[0, 16], [1, 5]]) {
    const counts = new Array(n).fill(0)
    let outside = 0
    for (let i = 0; i < V; i++) {
      const x = table[d * V + i]
      if (x >= 0 && x < n) counts[x]++
      else outside++
    }
    t.equal(outside, 0, `domain ${d}: every entry in [0, ${n})`)
    const expect = V / n
    const chi2 = counts.reduce((s, c) => s + (c - expect) ** 2 / expect, 0)
    t.ok(chi2 < 3 * n + 30, `domain ${d}: chi² ${chi2.toFixed(1)} for ${n - 1} degrees of freedom`)
  }
  t.notSame(hashView(makeRreTable(1, [8], 100)), hashView(makeRreTable(2, [8], 100)), 'seeds differ')
})

t.test('RRE tables are identical across processes', async (t) => {
  const helper = fileURLToPath(new URL('./helpers/rre-table-hash.js', import.meta.url))
  const args = ['777', '32000', '16', '16', '8', '24']
  const child = execFileSync(process.execPath, [helper, ...args], { encoding: 'utf8' }).trim()
  const here = hashView(makeRreTable(777, [16, 16, 8, 24], 32000))
  t.equal(child, here)
})

t.test('route: expert = firstExpert + table[domain][token], rows ascending per expert', async (t) => {
  const V = 50
  const table = makeRreTable(5, domains.map((d) => d.numExperts), V)
  const router = new RreRouter({ domains }, table, V, 7)
  const tokens = Int32Array.from({ length: 200 }, (_, i) => (i * 37 + 11) % V)
  for (const domain of ['chat', 1, 'code', 0] as const) {
    const d = router.domainIndex(domain)
    const out = allocSelection(7, 200)
    t.equal(router.route(tokens, domain, out), 200)
    // Reference: the obvious way.
    const want: number[][] = Array.from({ length: 7 }, () => [])
    tokens.forEach((id, i) => want[domains[d].firstExpert + table[d * V + id]].push(i))
    for (let e = 0; e < 7; e++) {
      t.equal(out.counts[e], want[e].length)
      t.same(Array.from(out.tokenRows.subarray(out.offsets[e], out.offsets[e + 1])), want[e], `domain ${domain}, expert ${e}`)
      t.same(Array.from(out.outRows.subarray(out.offsets[e], out.offsets[e + 1])), want[e])
    }
    t.equal(out.offsets[7], 200)
    t.ok(Array.from(out.scales).every((s) => s === 1))
    // Experts outside the domain's group get nothing.
    for (let e = 0; e < 7; e++)
      if (e < domains[d].firstExpert || e >= domains[d].firstExpert + domains[d].numExperts) t.equal(out.counts[e], 0)
  }
})

t.test('route is deterministic and writes into arena-style views', async (t) => {
  const V = 1000
  const router = new RreRouter({ domains }, makeRreTable(3, domains.map((d) => d.numExperts), V), V, 7)
  const tokens = Int32Array.from({ length: 64 }, (_, i) => (i * 7919) % V)
  const buf = new SharedArrayBuffer(selectionBytes(7, 64) + 256)
  const a = selectionViews(buf, 256, 7, 64)
  const b = allocSelection(7, 64)
  router.route(tokens, 'chat', a)
  router.route(tokens, 'chat', b)
  for (const k of ['counts', 'offsets', 'tokenRows', 'outRows', 'scales'] as const) t.same(Array.from(a[k]), Array.from(b[k]), k)
  t.same(Array.from(new Uint8Array(buf, 0, 256)), new Array(256).fill(0), 'nothing written before the views')
})

t.test('bad inputs are refused before any work', async (t) => {
  const V = 100
  const router = new RreRouter({ domains }, makeRreTable(3, domains.map((d) => d.numExperts), V), V, 7)
  const out = allocSelection(7, 8)
  out.counts.fill(-5)
  const bad = (f: () => unknown, re: RegExp, what: string) => throwsHetmoe(t, f, 'BAD_INPUT', re, what)
  bad(() => router.route(Int32Array.of(1, 2, 100), 'code', out), /token 2 has id 100, outside the vocabulary \[0, 100\)/, 'id = vocab')
  bad(() => router.route(Int32Array.of(-1), 'code', out), /token 0 has id -1/, 'negative id')
  bad(() => router.route(Int32Array.of(1), 'math', out), /unknown domain "math".*0 "code", 1 "chat"/, 'unknown name')
  bad(() => router.route(Int32Array.of(1), 2, out), /unknown domain 2/, 'index out of range')
  bad(() => router.route(new Int32Array(9), 0, out), /room for 8 routed rows; this batch routes 9/, 'selection too small')
  bad(() => router.route(Int32Array.of(1, 2), 0, out, 3), /token count 3 must be an integer in \[0, 2\]/, 'count beyond the ids')
  t.same(Array.from(out.counts), new Array(7).fill(-5), 'nothing written on failure')
  throwsHetmoe(t, () => new RreRouter({ domains }, new Int32Array(2 * V).fill(4), V, 7), 'BAD_MODEL', /entry for domain "code", token 0 is 4, outside \[0, 4\)/, 'table entry out of its group')
  throwsHetmoe(t, () => new RreRouter({ domains }, new Int32Array(5), V, 7), 'BAD_MODEL', /need 200/, 'table of the wrong size')
})

t.test('routing overhead at decode and prefill sizes (µs, median)', async (t) => {
  const V = 32000
  const ds = Array.from({ length: 4 }, (_, d) => ({ name: `d${d}`, firstExpert: 16 * d, numExperts: 16 }))
  const router = new RreRouter({ domains: ds }, makeRreTable(1, ds.map((d) => d.numExperts), V), V, 64)
  for (const T of [1, 16, 256, 4096]) {
    const tokens = Int32Array.from({ length: T }, (_, i) => (i * 7919) % V)
    const out = allocSelection(64, T)
    const runs = T <= 16 ? 20000 : 2000
    for (let i = 0; i < runs; i++) router.route(tokens, 'd2', out) // warm up (JIT)
    const times: number[] = []
    for (let i = 0; i < 200; i++) {
      const s = process.hrtime.bigint()
      for (let k = 0; k < 10; k++) router.route(tokens, 'd2', out)
      times.push(Number(process.hrtime.bigint() - s) / 10 / 1000)
    }
    times.sort((a, b) => a - b)
    const med = times[100]
    t.comment(`RRE route, ${T} tokens × 64 experts: median ${med.toFixed(2)} µs`)
    if (T === 1) t.ok(med < 30, `decode routing within the 30 µs per-layer budget (${med.toFixed(2)} µs)`)
  }
})
