// Every CPU kernel level this machine runs (plus scalar) against a float64 reference on fresh random
// inputs: all formats, both dtypes, SwiGLU and GeLU, sizes that are not multiples of the tiles,
// experts with 0, 1, a few and many tokens (the panel and AMX paths). Outputs are poisoned with NaN
// first; every output row is checked, and rows no expert writes must stay NaN.
import t from 'tap'

type Tap = Parameters<Parameters<typeof t.test>[1]>[0]
import { Arena } from '../runtime/arena.js'
import { native, type CpuIsa } from '../runtime/native.js'
import { runCpuLayerSync, type CpuLayerJob } from '../runtime/cpu-layer-job.js'
import type { FfnKind, WeightDtype, WeightFormat } from '../experts/manifest.js'
import { buildModel, gauss, referenceFfn, rng } from './fixtures/cpu-model.js'

const levels = native().cpuIsa().levels.filter((l) => l.available).map((l) => l.name)
const seed = Number(process.env.HETMOE_TEST_SEED ?? Date.now() % 1e9)
t.comment(`levels: ${levels.join(', ')}; seed ${seed} (HETMOE_TEST_SEED to repeat)`)

// Tokens per expert: none, one, a few (direct kernels), more than the direct/AMX crossover.
const COUNTS = [0, 1, 3, 13]

function shapes(format: WeightFormat): { D: number; F: number } {
  // Dense accepts any size; sparse needs multiples of 16 (D, F also even for 75%). AMX needs multiples of
  // 32, so the amx level gets a shape where the tiles apply (and still not multiples of 128).
  if (levels.includes('amx')) return { D: 160, F: 224 }
  return format === 'dense' ? { D: 75, F: 131 } : { D: 144, F: 208 }
}

async function check(t: Tap, isa: CpuIsa, format: WeightFormat, dtype: WeightDtype, ffn: FfnKind, caseSeed: number) {
  const { D, F } = shapes(format)
  const model = buildModel({ D, F, ffn, format, dtype, count: COUNTS.length, seed: caseSeed })
  t.teardown(() => model.close())
  const r = rng(caseSeed + 1)
  const T = 29
  const outRowsTotal = T + 11
  const arena = new Arena({ bytes: 8 << 20 })
  const hidden = arena.lease(T * D * 4).f32(T * D)
  for (let i = 0; i < hidden.length; i++) hidden[i] = gauss(r)
  const out = arena.lease(outRowsTotal * D * 4).f32(outRowsTotal * D)
  out.fill(NaN)
  // Distinct output rows across experts (a permutation), some rows never written.
  const perm = Array.from({ length: outRowsTotal }, (_, i) => i).sort(() => r() - 0.5)
  let nextOut = 0
  const experts = COUNTS.map((count, e) => {
    const tok = arena.lease(Math.max(count, 1) * 4)
    const outs = arena.lease(Math.max(count, 1) * 4)
    const sc = arena.lease(Math.max(count, 1) * 4)
    const tv = tok.i32(count)
    const ov = outs.i32(count)
    const sv = sc.f32(count)
    for (let i = 0; i < count; i++) {
      tv[i] = Math.floor(r() * T)
      ov[i] = perm[nextOut++]
      sv[i] = 0.5 + r()
    }
    return {
      matrices: model.experts[e],
      tokens: { offset: tok.offset, count },
      outRows: { offset: outs.offset },
      ...(e % 2 === 1 ? { scales: { offset: sc.offset } } : {}),
      views: { tv, ov, sv, scaled: e % 2 === 1 },
    }
  })
  const job: CpuLayerJob = {
    weightsId: model.weightsId,
    ffn,
    hiddenSize: D,
    ffnSize: F,
    hidden: { offset: hidden.byteOffset, rows: T },
    out: { offset: out.byteOffset, rows: outRowsTotal },
    experts: experts.map(({ views: _v, ...e }) => e),
    isa,
  }
  const res = runCpuLayerSync(arena, job)
  t.equal(res.isa, isa)
  const bf16Activations = dtype === 'bf16' && (isa === 'avx512bf16' || isa === 'amx')
  const tol = bf16Activations ? 1e-2 : 1e-4
  const written = new Set<number>()
  let worst = 0
  experts.forEach((e, ei) => {
    for (let i = 0; i < e.views.tv.length; i++) {
      const x = Float64Array.from(hidden.subarray(e.views.tv[i] * D, (e.views.tv[i] + 1) * D))
      const ref = referenceFfn(model.decoded[ei], x, D, F, ffn)
      const s = e.views.scaled ? e.views.sv[i] : 1
      const row = e.views.ov[i]
      written.add(row)
      let num = 0
      let den = 0
      let nan = false
      for (let d = 0; d < D; d++) {
        const got = out[row * D + d]
        if (!Number.isFinite(got)) nan = true
        num += (got - s * ref[d]) ** 2
        den += (s * ref[d]) ** 2
      }
      const rel = Math.sqrt(num / den)
      worst = Math.max(worst, nan ? Infinity : rel)
      if (nan || !(rel <= tol)) t.fail(`expert ${ei} (n=${e.views.tv.length}) token ${i}: relative error ${rel} > ${tol}${nan ? ' (non-finite)' : ''}`)
    }
  })
  let untouched = true
  for (let row = 0; row < outRowsTotal; row++)
    if (!written.has(row)) for (let d = 0; d < D; d++) if (!Number.isNaN(out[row * D + d])) untouched = false
  t.ok(untouched, 'rows no expert selected are untouched')
  t.ok(worst <= tol, `worst row relative error ${worst.toExponential(2)} <= ${tol}`)
}

for (const isa of levels) {
  t.test(`isa ${isa}`, async (t) => {
    let k = 0
    for (const format of ['dense', '2:4', '75%'] as const)
      for (const dtype of ['bf16', 'fp32'] as const)
        for (const ffn of ['swiglu', 'gelu'] as const)
          await t.test(`${format} ${dtype} ${ffn}`, (t) => check(t, isa, format, dtype, ffn, seed + 97 * k++))
  })
}

t.test('a level the CPU lacks is refused clearly', async (t) => {
  const missing = native().cpuIsa().levels.find((l) => !l.available)
  if (!missing) {
    t.pass('this CPU runs every level')
    return
  }
  t.throws(() => native().cpuResolveIsa(missing.name), new RegExp(`asks for the ${missing.name} kernels, but this CPU .* lacks`))
  t.throws(() => native().cpuResolveIsa('avx9000'), /expected one of scalar, avx2, avx512, avx512bf16, amx/)
})
