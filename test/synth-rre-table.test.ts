import t from 'tap'
import { makeRreTable } from '../experts/rre-table.js'
import { deriveSeed, mix32, Rng } from '../experts/rng.js'

// Golden values: these pin the PRNG and the table draw. If they change, every synthesised model and
// every RRE route changes with them — change them only on purpose (and bump what depends on it).
t.test('the PRNG stream is pinned', async (t) => {
  const r = new Rng(7)
  t.same([r.u32(), r.u32(), r.u32()], [469556257, 3105935780, 1523172794])
  t.equal(deriveSeed(1, 2, 3), 876711681)
  t.equal(mix32(123), 2235285516)
  const n = new Rng(7)
  t.same([n.normal(), n.normal()], [-0.3531795731616742, -2.074147148921068])
})

t.test('makeRreTable is pinned by a golden table', async (t) => {
  const table = makeRreTable(42, [4, 16], 32000)
  t.equal(table.length, 2 * 32000)
  t.same(Array.from(table.subarray(0, 16)), [0, 3, 0, 3, 2, 1, 3, 2, 2, 1, 2, 0, 1, 2, 2, 0])
  t.same(Array.from(table.subarray(32000, 32016)), [2, 4, 13, 6, 1, 1, 15, 10, 6, 2, 9, 13, 11, 5, 7, 3])
  let h = 0
  for (let i = 0; i < table.length; i++) h = (Math.imul(h, 31) + table[i]) >>> 0
  t.equal(h, 3682655484, 'hash of the whole table')
})

t.test('tables are uniform over each group and depend on the seed', async (t) => {
  const domains = [4, 16, 7]
  const vocab = 32000
  const table = makeRreTable(3, domains, vocab)
  domains.forEach((n, d) => {
    const counts = new Array(n).fill(0)
    let outside = 0
    for (let v = 0; v < vocab; v++) {
      const e = table[d * vocab + v]
      if (e >= 0 && e < n) counts[e]++
      else outside++
    }
    t.equal(outside, 0, `domain ${d}: every entry names an expert of the group`)
    const expected = vocab / n
    // chi-square with n-1 degrees of freedom; 99.9% quantile for n-1 <= 15 is below 40
    const chi2 = counts.reduce((s, c) => s + (c - expected) ** 2 / expected, 0)
    t.ok(chi2 < 40, `domain ${d}: chi² = ${chi2.toFixed(1)} over ${n} experts`)
  })
  t.same(makeRreTable(3, domains, vocab), table, 'same seed, same table')
  const other = makeRreTable(4, domains, vocab)
  let same = 0
  for (let i = 0; i < vocab; i++) if (other[i] === table[i]) same++
  t.ok(same < vocab * 0.3, 'another seed gives another table')
  t.throws(() => makeRreTable(1, [0], 10), RangeError)
  t.throws(() => makeRreTable(1, [2], 0), RangeError)
})

t.test('Rng.below is unbiased and in range, normal() has unit variance', async (t) => {
  const r = new Rng(11)
  for (const n of [1, 2, 3, 1000, 2 ** 31 + 5]) {
    for (let i = 0; i < 1000; i++) {
      const v = r.below(n)
      if (!(Number.isInteger(v) && v >= 0 && v < n)) t.fail(`below(${n}) gave ${v}`)
    }
  }
  let s = 0
  let s2 = 0
  const N = 200000
  for (let i = 0; i < N; i++) {
    const z = r.normal()
    s += z
    s2 += z * z
  }
  t.ok(Math.abs(s / N) < 0.01, `mean ${(s / N).toFixed(4)}`)
  t.ok(Math.abs(s2 / N - 1) < 0.01, `variance ${(s2 / N).toFixed(4)}`)
})
