// `hetmoe bench overhead`: the per-layer cost outside the expert kernels at decode batch sizes —
// routing, dispatch to the CPU workers, their wake-up and join, combine. Measured on the `tiny`
// model (D=64, F=128: each expert's kernel is well under a microsecond of arithmetic), so a forward's
// time is almost all overhead; the native kernel time is not subtracted, which makes these upper bounds.
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { writeFileSync } from 'node:fs'
import { createRuntime } from '../runtime/runtime.js'
import { loadModel } from '../experts/model.js'
import { synthModel } from '../experts/synth.js'
import { randomHidden, uniformTokens } from '../runtime/token-stream.js'
import { parseFlags, parseIntFlag } from '../runtime/cli/args.js'
import { benchMachine } from './support/machine.js'
import type { Command } from '../runtime/cli/command.js'

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]
const pct = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * p))]

export const bench: Command = {
  summary: 'per-layer overhead outside the kernels (routing, dispatch, combine) at decode sizes',
  usage: `Usage: hetmoe bench overhead [--iters N] [--threads N] [--json FILE]

Runs forwards of the tiny model (kernels negligible) at 1, 4 and 16 tokens, RRE (top-1) and a
top-2 gate, and reports the median, p90 and the route / compute+dispatch / combine split per layer.

  --iters N    forwards per case after warm-up (default 2000)
  --threads N  CPU worker threads (default: all cores)
  --json FILE  write the results as JSON`,
  async run(argv) {
    const { values } = parseFlags(argv, { iters: { type: 'string' }, threads: { type: 'string' }, json: { type: 'string' } })
    const iters = parseIntFlag(values.iters, '--iters', 2000, 10)
    const dir = mkdtempSync(join(tmpdir(), 'hetmoe-overhead-'))
    const results: { routing: string; tokens: number; medianUs: number; p90Us: number; routeUs: number; computeUs: number; combineUs: number }[] = []
    try {
      const presets = [
        { name: 'tiny-rre', layers: 1, hidden: 64, inner: 128, ffn: 'swiglu' as const, routing: { kind: 'rre' as const, domains: 2, expertsPerDomain: 4 }, vocabSize: 32000 },
        { name: 'tiny-gate', layers: 1, hidden: 64, inner: 128, ffn: 'swiglu' as const, routing: { kind: 'gate' as const, experts: 8, topK: 2, normalize: true }, vocabSize: 32000 },
      ]
      for (const preset of presets) {
        const out = join(dir, preset.name)
        await synthModel({ preset, out })
        const model = await loadModel(out)
        const rt = await createRuntime({ model, gpu: 'off', ...(values.threads ? { cpuThreads: parseIntFlag(values.threads, '--threads', 1, 1) } : {}) })
        for (const T of [1, 4, 16]) {
          const x = randomHidden(T, 64, T)
          const ids = uniformTokens(T, 32000, T)
          const o = new Float32Array(T * 64)
          const times: number[] = []
          const s0 = structuredClone(rt.stats().layers[0])
          for (let i = 0; i < iters + 200; i++) {
            const t0 = performance.now()
            await rt.forward(0, x, { tokenIds: ids, domain: 0, out: o })
            if (i >= 200) times.push((performance.now() - t0) * 1000)
          }
          const s1 = rt.stats().layers[0]
          const n = s1.forwards - s0.forwards
          results.push({
            routing: preset.routing.kind === 'rre' ? 'rre top-1' : 'gate top-2',
            tokens: T,
            medianUs: median(times),
            p90Us: pct(times, 0.9),
            routeUs: ((s1.ms.route - s0.ms.route) / n) * 1000,
            computeUs: ((s1.ms.compute - s0.ms.compute) / n) * 1000,
            combineUs: ((s1.ms.combine - s0.ms.combine) / n) * 1000,
          })
          process.stderr.write(`overhead: ${preset.name} T=${T} done\n`)
        }
        await rt.close()
        model.close()
      }
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
    const machine = benchMachine()
    console.log(`per-layer time of a forward on the tiny model (≈ overhead), ${iters} forwards each; mean split route / dispatch+kernels / combine`)
    console.log('routing     tokens  median µs  p90 µs   route  dispatch+kernel  combine')
    for (const r of results)
      console.log(`${r.routing.padEnd(11)} ${String(r.tokens).padStart(6)} ${r.medianUs.toFixed(1).padStart(10)} ${r.p90Us.toFixed(1).padStart(7)} ${r.routeUs.toFixed(1).padStart(7)} ${r.computeUs.toFixed(1).padStart(16)} ${r.combineUs.toFixed(1).padStart(8)}`)
    if (values.json) writeFileSync(values.json, JSON.stringify({ machine, iters, results }, null, 2) + '\n')
    return 0
  },
}
