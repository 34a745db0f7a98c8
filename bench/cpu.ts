// `hetmoe bench cpu`: the CPU expert kernels against the machine's read bandwidth and oneDNN.
//
// One run measures: the read bandwidth of all cores (native streaming reads, median GB/s); then, per
// weight format and kernel level, one layer job (native/cpu/layer_job.h, the code the workers run)
// over E experts with T tokens each, on --threads native threads, for T in 1..256. Weights are
// random, generated in the store layouts and memory-mapped; E is chosen so the weights are far
// larger than the last-level cache (rotated across experts), fewer at large T where the job is
// compute-bound. Medians after a warm-up. oneDNN (torch bf16 linear) runs the same shapes where
// python3 has torch.
import { execSync } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import { availableParallelism } from 'node:os'
import type { FfnKind, WeightDtype, WeightFormat } from '../experts/manifest.js'
import { Arena } from '../runtime/arena.js'
import { parseFlags, parseIntFlag } from '../runtime/cli/args.js'
import { UsageError, type Command } from '../runtime/cli/command.js'
import { Progress } from '../runtime/cli/progress.js'
import { encodeCpuLayerJob, type CpuLayerJob } from '../runtime/cpu-layer-job.js'
import { native, packageRoot, type CpuIsa } from '../runtime/native.js'
import { oneDnnAvailable, runOneDnn } from './cpu/onednn.js'
import { verifyKernels, type VerifyCase } from './cpu/verify.js'
import { writeBenchWeights } from './cpu/weights.js'

const PRESETS: Record<string, { D: number; F: number; ffn: FfnKind }> = {
  small: { D: 1024, F: 2816, ffn: 'swiglu' },
  'sigma-lite': { D: 2048, F: 8192, ffn: 'gelu' },
  fine: { D: 2048, F: 1408, ffn: 'swiglu' },
}
const TOKENS = [1, 2, 4, 8, 16, 64, 256]
const FORMATS: WeightFormat[] = ['dense', '2:4', '75%']
/** The portable level is a correctness fallback; by default it is timed only where it finishes quickly. */
const SCALAR_MAX_TOKENS = 16

export interface CpuBenchCase {
  format: WeightFormat
  dtype: WeightDtype
  isa: CpuIsa
  tokensPerExpert: number
  experts: number
  seconds: number
  weightGBps: number
  fractionOfReadBandwidth: number
  /** Dense-equivalent FLOPs (2·T·D·F per matrix, also for the sparse formats) per second. */
  tflops: number
  speedupVsDense: number | null
  speedupVsOneDNN: number | null
}

const median = (xs: ArrayLike<number>): number => {
  const s = Array.from(xs).sort((a, b) => a - b)
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2
}

function commit(): string {
  try {
    return execSync('git rev-parse --short HEAD', { cwd: packageRoot, stdio: ['ignore', 'pipe', 'ignore'] }).toString().trim()
  } catch {
    return process.env.HETMOE_COMMIT ?? 'unknown'
  }
}

/** Experts per job: all of them while memory-bound, fewer at large T (still rotated, compute-bound). */
const expertsFor = (E: number, T: number): number => Math.min(E, Math.max(4, Math.floor((E * 16) / T)))

export const bench: Command = {
  summary: 'CPU expert kernels vs read bandwidth and oneDNN',
  usage: `Usage: hetmoe bench cpu [options]

Times the CPU expert FFN (one layer job over many experts, T tokens each) for every weight format and
kernel level this CPU runs, at T = ${TOKENS.join(', ')}, against the machine's read bandwidth (measured in
the same run) and oneDNN's bf16 linear (python3 + torch, where importable).

  --preset NAME    small | sigma-lite | fine (shapes as in DESIGN.md). Defaults to small.
  --isa LEVEL      only this level (scalar, avx2, avx512, avx512bf16, amx). Defaults to every level the
                   CPU runs (scalar only up to ${SCALAR_MAX_TOKENS} tokens/expert).
  --threads N      threads (and torch threads). Defaults to the logical cores (HETMOE_CPU_THREADS).
  --formats LIST   comma-separated subset of dense,2:4,75%. Defaults to all.
  --tokens LIST    comma-separated tokens per expert. Defaults to ${TOKENS.join(',')}.
  --dtype D        bf16 | fp32 weights. Defaults to bf16.
  --weights-mib N  dense weight bytes per job at few tokens (rotated experts). Defaults to 768.
  --min-time S     seconds of timed runs per case (at least 3 runs). Defaults to 0.3.
  --no-onednn      skip the oneDNN baseline.
  --no-verify      skip the correctness pass (every level, format, dtype and FFN against a float64
                   reference on small random experts) that runs before the timings.
  --json FILE      also write the results as JSON.`,
  async run(argv) {
    const { values } = parseFlags(argv, {
      preset: { type: 'string' },
      isa: { type: 'string' },
      threads: { type: 'string' },
      formats: { type: 'string' },
      tokens: { type: 'string' },
      dtype: { type: 'string' },
      'weights-mib': { type: 'string' },
      'min-time': { type: 'string' },
      'no-onednn': { type: 'boolean' },
      'no-verify': { type: 'boolean' },
      json: { type: 'string' },
    })
    const presetName = values.preset ?? 'small'
    const preset = PRESETS[presetName]
    if (!preset) throw new UsageError(`--preset must be one of ${Object.keys(PRESETS).join(', ')} (got "${presetName}")`)
    const { D, F, ffn } = preset
    const threads = parseIntFlag(values.threads, '--threads', Number(process.env.HETMOE_CPU_THREADS) || availableParallelism(), 1)
    const dtype = (values.dtype ?? 'bf16') as WeightDtype
    if (dtype !== 'bf16' && dtype !== 'fp32') throw new UsageError(`--dtype must be bf16 or fp32 (got "${dtype}")`)
    const formats = values.formats ? (values.formats.split(',') as WeightFormat[]) : FORMATS
    for (const f of formats) if (!FORMATS.includes(f)) throw new UsageError(`--formats: unknown format "${f}"`)
    const tokens = values.tokens ? values.tokens.split(',').map((s) => parseIntFlag(s, '--tokens', 1, 1)) : TOKENS
    const weightsBytes = parseIntFlag(values['weights-mib'], '--weights-mib', 768, 1) * 2 ** 20
    const minTime = values['min-time'] === undefined ? 0.3 : Number(values['min-time'])
    if (!(minTime > 0)) throw new UsageError('--min-time must be a positive number of seconds')
    const addon = native()
    let isas: CpuIsa[]
    if (values.isa) {
      try {
        isas = [addon.cpuResolveIsa(values.isa).name]
      } catch (err) {
        throw new UsageError(`--isa: ${(err as Error).message}`)
      }
    } else {
      isas = addon.cpuIsa().levels.filter((l) => l.available).map((l) => l.name)
    }
    const info = addon.info()
    const machine = {
      cpu: info.cpu.model,
      vendor: info.cpu.vendor,
      cores: info.cpu.logicalCores,
      threads,
      isa: Object.entries(info.cpu.isa).filter(([, v]) => v).map(([k]) => k),
      levels: isas,
      commit: commit(),
      node: process.version,
      date: new Date().toISOString(),
    }
    process.stderr.write(`bench cpu: ${machine.cpu}, ${threads} threads, levels ${isas.join(', ')}, preset ${presetName} (D=${D}, F=${F}, ${ffn})\n`)

    // 0. Correctness first: a fast kernel that computes the wrong thing is not a result.
    let verification: VerifyCase[] = []
    if (!values['no-verify']) {
      verification = verifyKernels(isas, Date.now() % 1e9)
      const bad = verification.filter((v) => !v.ok)
      const worst = (isa: CpuIsa) => Math.max(...verification.filter((v) => v.isa === isa).map((v) => v.worstRelativeError))
      process.stderr.write(
        `verify: ${verification.length - bad.length}/${verification.length} cases within tolerance; worst relative error per level: ` +
          isas.map((i) => `${i} ${worst(i).toExponential(1)}`).join(', ') +
          '\n',
      )
      for (const b of bad) process.stderr.write(`verify FAILED: ${JSON.stringify(b)}\n`)
    }

    // 1. Read bandwidth, all threads.
    const bwRuns = addon.cpuReadBandwidth(Math.max(weightsBytes, 2 ** 30), threads, 7)
    const readBandwidthGBps = median(bwRuns)
    process.stderr.write(`read bandwidth: ${readBandwidthGBps.toFixed(1)} GB/s (median of ${bwRuns.length}; max ${Math.max(...bwRuns).toFixed(1)})\n`)

    const nMat = ffn === 'swiglu' ? 3 : 2
    const denseExpertBytes = nMat * D * F * (dtype === 'bf16' ? 2 : 4)
    const E = Math.max(4, Math.ceil(weightsBytes / denseExpertBytes))
    // One arena for the largest case.
    const caseBytes = (T: number) => {
      const n = expertsFor(E, T) * T
      const pad = expertsFor(E, T) * Math.ceil(T / 32) * 32
      return 2 * n * D * 4 + 2 * n * 4 + n * F * 4 + pad * (D + F) * 2 + 64 * 4096
    }
    const arena = new Arena({ bytes: Math.max(...tokens.map(caseBytes)) + (16 << 20) })
    const arenaU8 = new Uint8Array(arena.buffer)

    const plan = formats.flatMap((format) =>
      tokens.flatMap((T) => isas.filter((isa) => isa !== 'scalar' || values.isa || T <= SCALAR_MAX_TOKENS).map((isa) => ({ format, T, isa }))),
    )
    const progress = new Progress('bench cpu', plan.length)
    const results: CpuBenchCase[] = []
    for (const format of formats) {
      const weights = writeBenchWeights({ D, F, ffn, format, dtype, experts: E, seed: 1234 })
      try {
        for (const T of tokens) {
          const ET = expertsFor(E, T)
          const n = ET * T
          const hidden = arena.lease(n * D * 4)
          const out = arena.lease(n * D * 4)
          const rows = arena.lease(n * 4)
          try {
            addon.cpuFillRandom(hidden.u8(), 'fp32', 99 + T) // activations in ±0.05, never zeros
            const r = rows.i32(n)
            for (let i = 0; i < n; i++) r[i] = i
            const job: CpuLayerJob = {
              weightsId: weights.weightsId,
              ffn,
              hiddenSize: D,
              ffnSize: F,
              hidden: { offset: hidden.offset, rows: n },
              out: { offset: out.offset, rows: n },
              experts: Array.from({ length: ET }, (_, e) => ({
                matrices: weights.experts[e],
                tokens: { offset: rows.offset + e * T * 4, count: T },
                outRows: { offset: rows.offset + e * T * 4 },
              })),
            }
            for (const isa of isas) {
              if (isa === 'scalar' && !values.isa && T > SCALAR_MAX_TOKENS) continue
              const enc = encodeCpuLayerJob(arena, { ...job, isa })
              try {
                const first = addon.cpuBenchLayer(arenaU8, enc.descOffset, threads, 1)[0]
                const iters = Math.max(3, Math.min(50, Math.ceil(minTime / Math.max(first, 1e-6))))
                const seconds = median(addon.cpuBenchLayer(arenaU8, enc.descOffset, threads, iters))
                const weightGBps = (ET * weights.expertBytes) / seconds / 1e9
                results.push({
                  format,
                  dtype,
                  isa,
                  tokensPerExpert: T,
                  experts: ET,
                  seconds,
                  weightGBps,
                  fractionOfReadBandwidth: weightGBps / readBandwidthGBps,
                  tflops: (2 * n * nMat * D * F) / seconds / 1e12,
                  speedupVsDense: null,
                  speedupVsOneDNN: null,
                })
                progress.tick(1, `${format} ${isa} T=${T}: ${(seconds * 1e3).toFixed(2)} ms, ${weightGBps.toFixed(1)} GB/s`)
              } finally {
                enc.release()
              }
            }
          } finally {
            hidden.release()
            out.release()
            rows.release()
          }
        }
      } finally {
        weights.close()
      }
    }
    progress.done()

    for (const c of results) {
      const dense = results.find((d) => d.format === 'dense' && d.isa === c.isa && d.tokensPerExpert === c.tokensPerExpert)
      if (dense) c.speedupVsDense = dense.seconds / dense.experts / (c.seconds / c.experts)
    }
    let onednn: { torch: string; note?: string } | { note: string } = { note: '--no-onednn' }
    if (!values['no-onednn']) {
      const avail = oneDnnAvailable()
      if (!avail.ok) {
        onednn = { note: avail.why }
        process.stderr.write(`oneDNN baseline skipped: ${avail.why}\n`)
      } else {
        const od = runOneDnn({ D, F, ffn, threads, minTime, cases: tokens.map((T) => ({ tokens: T, experts: expertsFor(E, T) })) })
        onednn = { torch: od.torch }
        for (const c of results) {
          const o = od.results.find((r) => r.tokens === c.tokensPerExpert)
          if (o) c.speedupVsOneDNN = o.seconds / o.experts / (c.seconds / c.experts)
        }
        for (const o of od.results) {
          const ET = o.experts
          results.push({
            format: 'dense',
            dtype: 'bf16',
            isa: 'onednn' as CpuIsa,
            tokensPerExpert: o.tokens,
            experts: ET,
            seconds: o.seconds,
            weightGBps: (ET * denseExpertBytes * (dtype === 'bf16' ? 1 : 0.5)) / o.seconds / 1e9,
            fractionOfReadBandwidth: (ET * denseExpertBytes * (dtype === 'bf16' ? 1 : 0.5)) / o.seconds / 1e9 / readBandwidthGBps,
            tflops: (2 * ET * o.tokens * nMat * D * F) / o.seconds / 1e12,
            speedupVsDense: null,
            speedupVsOneDNN: 1,
          })
        }
      }
    }

    const report = { bench: 'cpu', preset: presetName, shape: { D, F, ffn, dtype, expertsAtFewTokens: E }, machine, readBandwidthGBps, onednn, verification, results }
    if (values.json) writeFileSync(values.json, JSON.stringify(report, null, 2) + '\n')
    console.log(formatTable(report.machine.cpu, readBandwidthGBps, results))
    return verification.every((v) => v.ok) ? 0 : 1
  },
}

function formatTable(cpu: string, bw: number, results: CpuBenchCase[]): string {
  const fmt = (x: number | null, d = 2) => (x === null ? '—' : x.toFixed(d))
  const head = ['format', 'isa', 'T/expert', 'experts', 'ms', 'weight GB/s', '% read BW', 'TFLOP/s', 'vs dense', 'vs oneDNN']
  const rows = results.map((c) => [
    c.format,
    c.isa,
    String(c.tokensPerExpert),
    String(c.experts),
    (c.seconds * 1e3).toFixed(3),
    c.weightGBps.toFixed(1),
    (100 * c.fractionOfReadBandwidth).toFixed(1),
    fmt(c.tflops, 3),
    fmt(c.speedupVsDense),
    fmt(c.speedupVsOneDNN),
  ])
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)))
  const line = (r: string[]) => r.map((x, i) => x.padStart(widths[i])).join('  ')
  return [`${cpu}: read bandwidth ${bw.toFixed(1)} GB/s`, line(head), ...rows.map(line)].join('\n')
}
