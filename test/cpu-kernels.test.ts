// Every CPU kernel level this machine runs (plus scalar) against a float64 reference on fresh random
// inputs: all formats, both dtypes, SwiGLU and GeLU, sizes that are not multiples of the tiles,
// experts with 0, 1, a few and many tokens (the panel and AMX paths). Outputs are poisoned with NaN
// first; every output row is checked, and rows no expert writes must stay NaN.
import t from 'tap'
import { Arena } from '../runtime/arena.js'
import { native, type CpuIsa } from '../runtime/native.js'
import { runCpuLayerSync } from '../runtime/cpu-layer-job.js'
import type { FfnKind, WeightDtype, WeightFormat } from '../experts/manifest.js'
import { buildModel, prepareJob } from './fixtures/cpu-model.js'

type Tap = Parameters<Parameters<typeof t.test>[0]>[0]

const levels = native().cpuIsa().levels.filter((l) => l.available).map((l) => l.name)
const seed = Number(process.env.HETMOE_TEST_SEED ?? Date.now() % 1e9)
t.comment(`levels: ${levels.join(', ')}; seed ${seed} (HETMOE_TEST_SEED to repeat)`)

// Tokens per expert: none, one, a few (direct kernels), past the direct/panel and dense AMX
// crossovers (8), past the sparse AMX crossover (16) and more than one 32-token tile pair.
const COUNTS = [0, 1, 3, 13, 37]

function shapes(format: WeightFormat, isa: CpuIsa): { D: number; F: number } {
  // Dense accepts any size; sparse needs multiples of 16 (and even rows for 75%). The AMX tiles need
  // multiples of 32: the amx level gets such a shape (still not multiples of the 128-row blocks).
  if (isa === 'amx') return { D: 160, F: 224 }
  return format === 'dense' ? { D: 75, F: 131 } : { D: 144, F: 208 }
}

function check(t: Tap, isa: CpuIsa, format: WeightFormat, dtype: WeightDtype, ffn: FfnKind, caseSeed: number) {
  const { D, F } = shapes(format, isa)
  const model = buildModel({ D, F, ffn, format, dtype, count: COUNTS.length, seed: caseSeed })
  t.teardown(() => model.close())
  const arena = new Arena({ bytes: 8 << 20 })
  const p = prepareJob(arena, model, { D, F, ffn, counts: COUNTS, T: 29, seed: caseSeed + 1, isa })
  const res = runCpuLayerSync(arena, p.job)
  t.equal(res.isa, isa)
  // Paths that round activations to bf16 (vdpbf16ps, AMX) on bf16 weights; all others accumulate fp32.
  const tol = dtype === 'bf16' && (isa === 'avx512bf16' || isa === 'amx') ? 1e-2 : 1e-4
  const v = p.verify(tol)
  for (const f of v.failures) t.fail(f)
  t.ok(v.untouched, 'rows no expert selected are untouched')
  t.ok(v.worst <= tol, `worst row relative error ${v.worst.toExponential(2)} <= ${tol}`)
}

for (const isa of levels) {
  t.test(`isa ${isa}`, async (t) => {
    let k = 0
    for (const format of ['dense', '2:4', '75%'] as const)
      for (const dtype of ['bf16', 'fp32'] as const)
        for (const ffn of ['swiglu', 'gelu'] as const) {
          const s = seed + 97 * k++
          await t.test(`${format} ${dtype} ${ffn}`, async (t) => check(t, isa, format, dtype, ffn, s))
        }
  })
}

t.test('HETMOE_ISA / the isa argument: a level the CPU lacks is refused clearly', async (t) => {
  t.throws(() => native().cpuResolveIsa('avx9000'), /expected one of scalar, avx2, avx512, avx512bf16, amx/)
  const missing = native().cpuIsa().levels.find((l) => !l.available)
  if (!missing) {
    t.pass('this CPU runs every level')
    return
  }
  t.throws(() => native().cpuResolveIsa(missing.name), new RegExp(`asks for the ${missing.name} kernels, but this CPU .* lacks`))
})

t.test('HETMOE_ISA forces a level for jobs that name none', async (t) => {
  const saved = process.env.HETMOE_ISA
  t.teardown(() => {
    if (saved === undefined) delete process.env.HETMOE_ISA
    else process.env.HETMOE_ISA = saved
  })
  process.env.HETMOE_ISA = 'scalar'
  t.equal(native().cpuResolveIsa().name, 'scalar')
  process.env.HETMOE_ISA = 'avx9000'
  t.throws(() => native().cpuResolveIsa(), /HETMOE_ISA is "avx9000"/)
  delete process.env.HETMOE_ISA
  t.equal(native().cpuResolveIsa().name, native().cpuIsa().best)
})
