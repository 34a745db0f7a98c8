// `hetmoe bench cpu --verify`: before timing, every kernel level this CPU runs computes small random
// experts of every format, dtype and FFN (experts with 0, 1, 3, 13 and 37 tokens: direct, panel and
// AMX paths) and every output row is checked against the float64 reference — the checks of
// test/cpu-kernels.test.ts, runnable where the test runner is not installed (the GPU machine).
import type { FfnKind, WeightDtype, WeightFormat } from '../../experts/manifest.js'
import { Arena } from '../../runtime/arena.js'
import { runCpuLayerSync } from '../../runtime/cpu-layer-job.js'
import type { CpuIsa } from '../../runtime/native.js'
import { buildModel, prepareJob } from './reference.js'

export interface VerifyCase {
  isa: CpuIsa
  format: WeightFormat
  dtype: WeightDtype
  ffn: FfnKind
  worstRelativeError: number
  tolerance: number
  untouched: boolean
  ok: boolean
}

export const VERIFY_COUNTS = [0, 1, 3, 13, 37]

export function verifyKernels(levels: CpuIsa[], seed: number): VerifyCase[] {
  const out: VerifyCase[] = []
  let k = 0
  for (const isa of levels)
    for (const format of ['dense', '2:4', '75%'] as const)
      for (const dtype of ['bf16', 'fp32'] as const)
        for (const ffn of ['swiglu', 'gelu'] as const) {
          // AMX tiles need D, F multiples of 32; the other levels get sizes off every tile.
          const { D, F } = isa === 'amx' ? { D: 160, F: 224 } : format === 'dense' ? { D: 75, F: 131 } : { D: 144, F: 208 }
          const s = seed + 97 * k++
          const model = buildModel({ D, F, ffn, format, dtype, count: VERIFY_COUNTS.length, seed: s })
          try {
            const arena = new Arena({ bytes: 8 << 20 })
            const p = prepareJob(arena, model, { D, F, ffn, counts: VERIFY_COUNTS, T: 29, seed: s + 1, isa })
            runCpuLayerSync(arena, p.job)
            const tolerance = dtype === 'bf16' && (isa === 'avx512bf16' || isa === 'amx') ? 1e-2 : 1e-4
            const v = p.verify(tolerance)
            out.push({ isa, format, dtype, ffn, worstRelativeError: v.worst, tolerance, untouched: v.untouched, ok: v.failures.length === 0 && v.untouched })
          } finally {
            model.close()
          }
        }
  return out
}
