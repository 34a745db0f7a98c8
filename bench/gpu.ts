// `hetmoe bench gpu`: the GPU expert layer (native/cuda/) in each weight format against cuBLAS
// dense and cuSPARSELt 2:4, in one process, on random weights (magnitude-pruned to each format) and
// random balanced routings. The measuring is native (native/cuda/gpu_bench.cu); this file parses
// flags, adds the machine and commit, prints the table and writes the JSON.
import { execSync } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import { native } from '../runtime/native.js'
import { parseFlags } from '../runtime/cli/args.js'
import type { Command } from '../runtime/cli/command.js'
import { UsageError } from '../runtime/cli/command.js'

interface Row {
  kernel: string
  format: string
  tokensPerExpert: number
  ms: number
  tflops: number
  weightGBps: number
  speedupVsCublas: number | null
  speedupVsCusparselt: number | null
  checkRelErr?: number
  checkedAgainst?: string
  path?: string
}

const presets: Record<string, { E: number; D: number; F: number; topK: number }> = {
  mixtral: { E: 8, D: 4096, F: 14336, topK: 2 },
  fine: { E: 64, D: 2048, F: 1408, topK: 6 },
  small: { E: 8, D: 1024, F: 2816, topK: 2 },
  tiny: { E: 4, D: 256, F: 512, topK: 2 },
}

export const WHAT_IS_MEASURED = [
  'hetmoe: two launches per layer (gate+up fused with SwiGLU, then down); hidden rows gathered through the selection array on load, outputs scaled and scattered to their rows on store; weights pre-packed once. path: mma = the register-tiled mma.sp kernel (small batches), wgmma = the sm_90a large-batch kernel (cp.async shared-memory pipeline, wgmma.mma_async.sp; used where the largest expert has >= HETMOE_WGMMA_MIN tokens, default 32).',
  'cublas: gather of the routed rows into a compact buffer (1 kernel), per expert one cublasGemmEx for gate|up (bf16 in, fp32 accumulate, bf16 out), SwiGLU (1 kernel), per expert one cublasGemmEx for down (fp32 out), scale+scatter (1 kernel).',
  'cusparselt: gather into per-expert buffers padded to 16 tokens (1 kernel), per expert cusparseLtMatmul gate|up (2:4 weights compressed once, plans made once per size, default algorithm, bf16 out), SwiGLU, cusparseLtMatmul down (bf16 out), scale+transpose+scatter.',
  'All times: median of CUDA-event times per layer call after warm-up; two hidden buffers alternate between calls; weights (>= 1 GB in these presets) do not fit in L2.',
  'tflops counts dense-equivalent work (2*S*3*D*F); weightGBps counts the bytes of the weights each variant reads (its own format).',
]

function commit(): string {
  if (process.env.HETMOE_COMMIT) return process.env.HETMOE_COMMIT
  try {
    return execSync('git rev-parse HEAD', { stdio: ['ignore', 'pipe', 'ignore'] }).toString().trim()
  } catch {
    return 'unknown'
  }
}

function fmt(v: number | null | undefined, digits = 2): string {
  return v === null || v === undefined || !Number.isFinite(v) ? '-' : v.toFixed(digits)
}

export function formatTable(rows: Row[]): string {
  const head = ['kernel', 'format', 'tok/exp', 'ms', 'TFLOP/s', 'weight GB/s', 'vs cuBLAS', 'vs cuSPARSELt', 'check']
  const lines = rows.map((r) => [
    r.path ? `${r.kernel} (${r.path})` : r.kernel,
    r.format,
    String(r.tokensPerExpert),
    fmt(r.ms, 4),
    fmt(r.tflops, 1),
    fmt(r.weightGBps, 0),
    fmt(r.speedupVsCublas),
    fmt(r.speedupVsCusparselt),
    r.checkRelErr !== undefined ? `${r.checkRelErr.toExponential(1)} vs ${r.checkedAgainst}` : '',
  ])
  const w = head.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i].length)))
  const fmtLine = (l: string[]) => '| ' + l.map((c, i) => c.padEnd(w[i])).join(' | ') + ' |'
  return [fmtLine(head), '| ' + w.map((n) => '-'.repeat(n)).join(' | ') + ' |', ...lines.map(fmtLine)].join('\n')
}

export const bench: Command = {
  summary: 'GPU expert layer: hetmoe sparse-sparse kernel (dense, 2:4, 75%) vs cuBLAS and cuSPARSELt',
  usage: `Usage: hetmoe bench gpu [--preset mixtral|fine|small|tiny] [--tokens 1,4,16,...] [--formats dense,2:4,75%]
                       [--no-baselines] [--json FILE]

One MoE layer's experts on the GPU, all in one process on the same random weights (magnitude-pruned
to each format) and random balanced routings (exactly N tokens per expert, top-k distinct experts
per token):
  mixtral  8 experts, D=4096, F=14336, SwiGLU, top-2
  fine     64 experts, D=2048, F=1408, SwiGLU, top-6
Tokens per expert default to 1,4,16,64,256,1024,4096. cuBLAS and cuSPARSELt are loaded at run time
(CUDA installation or Python site-packages; HETMOE_CUBLAS / HETMOE_CUSPARSELT name a library).

  --json FILE   also write the results (machine, commit, every measurement) as JSON`,
  async run(argv) {
    const { values } = parseFlags(argv, {
      preset: { type: 'string' },
      tokens: { type: 'string' },
      formats: { type: 'string' },
      'no-baselines': { type: 'boolean' },
      json: { type: 'string' },
    })
    const presetName = values.preset ?? 'mixtral'
    const preset = presets[presetName]
    if (!preset) throw new UsageError(`--preset must be one of ${Object.keys(presets).join(', ')}`)
    const tokens = values.tokens ? values.tokens.split(',').map(Number) : [1, 4, 16, 64, 256, 1024, 4096]
    if (tokens.some((n) => !Number.isInteger(n) || n < 1)) throw new UsageError('--tokens must be positive integers')
    const formats = values.formats ? values.formats.split(',') : ['dense', '2:4', '75%']
    const avail = native().gpuAvailable()
    if (!avail.available) {
      console.error(`hetmoe bench gpu: no usable GPU (${avail.reason})`)
      return 1
    }
    const text = native().gpuBench({ preset: presetName, ...preset, tokensPerExpert: tokens, formats, baselines: !values['no-baselines'] })
    const r = JSON.parse(text) as {
      device: string
      computeCapability: string
      driverVersion: number
      runtimeVersion: number
      cublas: string | null
      cusparselt: string | null
      notes: string[]
      results: Row[]
    }
    const machine = {
      gpu: r.device,
      computeCapability: r.computeCapability,
      driver: r.driverVersion,
      cuda: r.runtimeVersion,
      cublas: r.cublas,
      cusparselt: r.cusparselt,
      commit: commit(),
      date: new Date().toISOString(),
    }
    const doc = { bench: 'gpu', preset: presetName, shape: preset, machine, whatIsMeasured: WHAT_IS_MEASURED, notes: r.notes, results: r.results }
    console.log(`hetmoe bench gpu --preset ${presetName}: ${r.device} (sm ${r.computeCapability}), driver ${r.driverVersion}, CUDA runtime ${r.runtimeVersion}, commit ${machine.commit.slice(0, 12)}`)
    console.log(`E=${preset.E} D=${preset.D} F=${preset.F} top-${preset.topK}; cuBLAS: ${r.cublas ?? 'absent'}; cuSPARSELt: ${r.cusparselt ?? 'absent'}`)
    for (const n of r.notes) console.log(`note: ${n}`)
    console.log(formatTable(r.results))
    for (const w of WHAT_IS_MEASURED) console.log(`- ${w}`)
    if (values.json) writeFileSync(values.json, JSON.stringify(doc, null, 2) + '\n')
    return 0
  },
}
