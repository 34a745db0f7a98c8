// `hetmoe bench hybrid`: whole MoE layers under limited GPU memory, hetmoe's placement against the
// strategies operators use today, all on the same tokens in one process. See the usage text.
import { readFileSync, writeFileSync } from 'node:fs'
import { arenaBytesFor, createRuntime, type PlacementPlan } from '../runtime/runtime.js'
import { loadModel, type Model } from '../experts/model.js'
import type { PresetName } from '../experts/synth.js'
import { cachedPresetModel } from '../runtime/model-cache.js'
import { planForModel } from '../runtime/placement.js'
import { runTokenStream } from '../runtime/stream-runner.js'
import { uniformTokens, zipfTokens } from '../runtime/token-stream.js'
import { GpuBackend } from '../runtime/gpu-backend.js'
import type { GpuStrategy } from '../runtime/gpu-cache.js'
import { expertShape } from '../scheduler/cost-model.js'
import { profileFromTokens } from '../scheduler/profile.js'
import { parseFlags } from '../runtime/cli/args.js'
import { UsageError, type Command } from '../runtime/cli/command.js'
import { benchMachine } from './support/machine.js'
import { lineChartSvg } from './support/chart.js'

const STRATEGIES = ['hetmoe', 'cpu-only', 'all-gpu', 'on-demand-lru', 'fiddler-rule', 'stream-at-32'] as const
type Strategy = (typeof STRATEGIES)[number]

export interface HybridResult {
  preset: string
  batch: number
  stream: 'zipf' | 'uniform'
  gpuBudgetFraction: number
  strategy: Strategy
  tokensPerS: number | null
  gpuTokenShare: number | null
  /** Why no number: e.g. no GPU, or the experts do not fit. */
  skipped?: string
  batchesTimed?: number
  /** Where a batch's time went, summed over the layers and averaged over the timed batches (ms):
   *  forward() stages, each side from dispatch to completion, and the GPU's own event timings. */
  /** Background re-placements the runtime made during the timed batches (hetmoe only), and the
   *  experts they moved to the GPU. */
  replacements?: number
  expertsMovedIn?: number
  msPerBatch?: { forward: number; route: number; compute: number; combine: number; cpuSide: number; gpuSide: number; gpuStream: number; gpuKernel: number; gpuHost: number; gpuPlace: number }
}

const list = <T>(text: string | undefined, fallback: T[], parse: (s: string) => T, flag: string): T[] => {
  if (text === undefined) return fallback
  const xs = text.split(',').map((s) => s.trim()).filter(Boolean).map(parse)
  if (!xs.length) throw new UsageError(`${flag} needs a comma-separated list`)
  return xs
}

/** Most popular experts first, within the budget: the static placement the rule-based systems start from. */
function popularFirst(model: Model, tokens: Int32Array, budgetBytes: number): PlacementPlan {
  const m = model.manifest
  const rre = m.layers.every((l) => l.routing.kind === 'rre')
  const counts = rre ? profileFromTokens(model, tokens).layers.map((l) => l.counts) : m.layers.map((l) => l.experts.map(() => 1))
  const all = m.layers.flatMap((l, layer) => l.experts.map((e, i) => ({ layer, e: i, n: counts[layer][i], bytes: expertShape(e).bytes })))
  all.sort((a, b) => b.n - a.n || a.layer - b.layer || a.e - b.e)
  let used = 0
  const layers = m.layers.map((_, layer) => ({ layer, gpuExperts: [] as number[] }))
  for (const x of all) if (used + x.bytes <= budgetBytes) (used += x.bytes), layers[x.layer].gpuExperts.push(x.e)
  return { layers }
}

export const bench: Command = {
  summary: "hybrid MoE layers: hetmoe's placement vs cpu-only, all-gpu, on-demand LRU, Fiddler's and llama.cpp's rules",
  usage: `Usage: hetmoe bench hybrid [--preset sigma-lite|fine|mixtral|small|tiny] [--model DIR]
                          [--batches 1,16,256,4096] [--streams zipf,uniform]
                          [--budgets 0,0.1,0.25,0.5,1] [--strategies LIST] [--seconds S]
                          [--json FILE] [--md FILE] [--chart FILE.svg]

Runs whole MoE layers (every layer of the model) at each batch size, token stream and GPU memory
budget (a fraction of all experts' bytes), for each strategy, on the same tokens in this process:
  hetmoe         the planner's placement + per-batch streaming from the calibrated cost model
  cpu-only       every expert on the CPU workers
  all-gpu        every expert resident (only where the budget holds them all)
  on-demand-lru  active experts copied to the GPU when missing, LRU cache of the budget's size
  fiddler-rule   CPU below 10 tokens per expert, else copy to the GPU and run there
  stream-at-32   copy missing experts when the batch has >= 32 tokens (llama.cpp's rule)
The rule-based strategies start from the most popular experts resident within the budget.
Without a usable GPU, only cpu-only runs; the others are reported as skipped, with the reason.

  --seconds S   time per case after one warm-up batch (default 1.5; at least 2 batches)
  --from FILE   print the table and draw the chart from a saved --json instead of measuring`,
  async run(argv) {
    const { values } = parseFlags(argv, {
      preset: { type: 'string' }, model: { type: 'string' }, batches: { type: 'string' }, streams: { type: 'string' },
      budgets: { type: 'string' }, strategies: { type: 'string' }, seconds: { type: 'string' },
      json: { type: 'string' }, md: { type: 'string' }, chart: { type: 'string' }, from: { type: 'string' },
    })
    if (values.from) {
      const saved = JSON.parse(readFileSync(values.from, 'utf8')) as { machine: ReturnType<typeof benchMachine>; preset: string; results: HybridResult[] }
      report(saved.preset, saved.machine, saved.results, values)
      return 0
    }
    const batches = list(values.batches, [1, 16, 256, 4096], (s) => { const n = Number(s); if (!Number.isInteger(n) || n < 1) throw new UsageError(`--batches: "${s}" is not a positive integer`); return n }, '--batches')
    const streams = list(values.streams, ['zipf', 'uniform'] as ('zipf' | 'uniform')[], (s) => { if (s !== 'zipf' && s !== 'uniform') throw new UsageError(`--streams: "${s}" is not zipf or uniform`); return s }, '--streams')
    const budgets = list(values.budgets, [0, 0.1, 0.25, 0.5, 1], (s) => { const f = Number(s); if (!(f >= 0 && f <= 1)) throw new UsageError(`--budgets: "${s}" is not a fraction in [0, 1]`); return f }, '--budgets')
    const strategies = list(values.strategies, [...STRATEGIES], (s) => { if (!STRATEGIES.includes(s as Strategy)) throw new UsageError(`--strategies: unknown "${s}" (${STRATEGIES.join(', ')})`); return s as Strategy }, '--strategies')
    const seconds = values.seconds === undefined ? 1.5 : Number(values.seconds)
    if (!(seconds > 0)) throw new UsageError('--seconds must be a positive number')
    const preset = (values.preset ?? 'sigma-lite') as PresetName
    const dir = values.model ?? (await cachedPresetModel(preset, 'hetmoe bench hybrid'))
    const model = await loadModel(dir)
    const name = values.model ? model.manifest.name : preset
    const totalBytes = model.manifest.layers.reduce((s, l) => s + l.experts.reduce((a, e) => a + expertShape(e).bytes, 0), 0)
    const gpu = GpuBackend.available()
    const results: HybridResult[] = []
    const V = model.manifest.vocabSize
    const maxBatch = Math.max(...batches)
    try {
      for (const stream of streams) {
        const tokens = stream === 'zipf' ? zipfTokens(Math.max(8 * maxBatch, 4096), V, 1.1, 11) : uniformTokens(Math.max(8 * maxBatch, 4096), V, 11)
        for (const batch of batches) {
          let cpuOnly: { tokensPerS: number; gpuTokenShare: number; batchesTimed: number } | undefined
          for (const frac of budgets) {
            const budgetBytes = Math.floor(frac * totalBytes)
            for (const strategy of strategies) {
              const row: HybridResult = { preset: name, batch, stream, gpuBudgetFraction: frac, strategy, tokensPerS: null, gpuTokenShare: null }
              results.push(row)
              if (strategy !== 'cpu-only' && !gpu.available) { row.skipped = `no usable GPU (${gpu.reason})`; continue }
              if (strategy === 'all-gpu' && frac < 1) { row.skipped = 'all experts do not fit in this budget'; continue }
              if (strategy === 'cpu-only' && cpuOnly) { Object.assign(row, cpuOnly, { skipped: 'measured once per batch and stream (independent of the budget)' }); continue }
              process.stderr.write(`hybrid: ${stream} batch ${batch} budget ${(100 * frac).toFixed(0)}% ${strategy}\n`)
              const cpu = strategy === 'cpu-only'
              const plan = cpu ? undefined : strategy === 'hetmoe' ? (await planForModel(model, { tokens, gpu: 0, batch, gpuMemory: Math.max(1, budgetBytes), domain: 0 })).plan : popularFirst(model, tokens, budgetBytes)
              const rt = await createRuntime({
                arenaBytes: arenaBytesFor(model, batch),
                model,
                gpu: cpu ? 'off' : 0,
                ...(cpu ? {} : { gpuMemory: Math.max(1, budgetBytes), plan, strategy: (strategy === 'all-gpu' ? 'hetmoe' : strategy) as GpuStrategy }),
              })
              try {
                const warm = tokens.subarray(0, batch)
                await runTokenStream(rt, { tokens: warm, batch, domain: 0 })
                let done = 0
                let at = batch
                let secs = 0
                let gpuShareSum = 0
                const ms = { forward: 0, route: 0, compute: 0, combine: 0, cpuSide: 0, gpuSide: 0, gpuStream: 0, gpuKernel: 0, gpuHost: 0, gpuPlace: 0 }
                while ((secs < seconds || done < 2) && done < 1000) {
                  if (at + batch > tokens.length) at = 0
                  const r = await runTokenStream(rt, { tokens: tokens.subarray(at, at + batch), batch, domain: 0 })
                  at += batch
                  secs += r.seconds
                  gpuShareSum += r.gpuTokenShare
                  done++
                  for (const l of r.perLayer) {
                    ms.forward += l.msPerBatch
                    ms.route += l.routeMs
                    ms.compute += l.computeMs
                    ms.combine += l.combineMs
                    ms.cpuSide += l.cpuMs ?? 0
                    ms.gpuSide += l.gpuMs ?? 0
                    ms.gpuStream += l.gpuStreamMs ?? 0
                    ms.gpuKernel += l.gpuKernelMs ?? 0
                    ms.gpuHost += l.gpuHostMs ?? 0
                    ms.gpuPlace += l.gpuPlaceMs ?? 0
                  }
                }
                const g = rt.stats().gpu
                if (g.replacements) Object.assign(row, { replacements: g.replacements, expertsMovedIn: g.expertsMovedIn })
                row.tokensPerS = (done * batch) / secs
                row.gpuTokenShare = gpuShareSum / done
                row.batchesTimed = done
                row.msPerBatch = Object.fromEntries(Object.entries(ms).map(([k, v]) => [k, +(v / done).toFixed(4)])) as HybridResult['msPerBatch']
                if (cpu) cpuOnly = { tokensPerS: row.tokensPerS, gpuTokenShare: 0, batchesTimed: done }
              } finally {
                await rt.close()
              }
            }
          }
        }
      }
    } finally {
      model.close()
    }
    const machine = benchMachine()
    if (values.json) writeFileSync(values.json, JSON.stringify({ machine, preset: name, totalExpertBytes: totalBytes, results }, null, 2) + '\n')
    report(name, machine, results, values)
    return 0
  },
}

/** The markdown table on stdout (and --md), and the --chart SVG: tokens/s against the GPU budget per strategy. */
function report(name: string, machine: ReturnType<typeof benchMachine>, results: HybridResult[], out: { md?: string; chart?: string }): void {
  const md = markdown(name, machine, results)
  console.log(md)
  if (out.md) writeFileSync(out.md, md + '\n')
  if (!out.chart) return
  const streams = [...new Set(results.map((r) => r.stream))]
  const stream = streams.includes('zipf') ? 'zipf' : streams[0]
  const batches = [...new Set(results.map((r) => r.batch))]
  const strategies = [...new Set(results.map((r) => r.strategy))]
  const panels = batches.map((b) => ({
    title: `batch ${b}`,
    series: strategies.map((s) => ({ name: s, points: results.filter((r) => r.batch === b && r.stream === stream && r.strategy === s && r.tokensPerS).map((r) => ({ x: r.gpuBudgetFraction, y: r.tokensPerS! })) })),
  }))
  const where = `${machine.cpu}${machine.gpu ? ` + ${machine.gpu}` : ', no GPU'}; commit ${machine.commit}`
  writeFileSync(out.chart, lineChartSvg(`${name}: tokens/s through all MoE layers vs GPU budget (${stream} tokens)`, where, 'GPU budget (share of expert bytes)', 'tokens/s', panels, (x) => `${Math.round(100 * x)}%`))
}

function markdown(name: string, machine: ReturnType<typeof benchMachine>, results: HybridResult[]): string {
  const strategies = [...new Set(results.map((r) => r.strategy))]
  const keys = [...new Set(results.map((r) => `${r.stream}|${r.batch}|${r.gpuBudgetFraction}`))]
  const cell = (r: HybridResult | undefined) => (r?.tokensPerS ? r.tokensPerS.toFixed(r.tokensPerS < 100 ? 1 : 0) : '—')
  const lines = [
    `### ${name}: tokens/s through all MoE layers (${machine.cpu}${machine.gpu ? ` + ${machine.gpu}` : ', no GPU'}; commit ${machine.commit})`,
    '',
    `| stream | batch | GPU budget | ${strategies.join(' | ')} |`,
    `| --- | ---: | ---: | ${strategies.map(() => '---:').join(' | ')} |`,
  ]
  for (const k of keys) {
    const [stream, batch, frac] = k.split('|')
    const rs = results.filter((r) => `${r.stream}|${r.batch}|${r.gpuBudgetFraction}` === k)
    lines.push(`| ${stream} | ${batch} | ${Math.round(100 * Number(frac))}% | ${strategies.map((s) => cell(rs.find((r) => r.strategy === s))).join(' | ')} |`)
  }
  const skipped = [...new Set(results.filter((r) => r.skipped && !r.tokensPerS).map((r) => `${r.strategy}: ${r.skipped}`))]
  if (skipped.length) lines.push('', 'Not measured: ' + skipped.join('; '))
  return lines.join('\n')
}
