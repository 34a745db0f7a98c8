// `hetmoe bench overhead`: the per-layer cost outside the expert kernels at decode batch sizes —
// routing, dispatch to the CPU crew (and its wake-up and join), combine.
//
// Two parts, because no single model isolates all three:
//  - dispatch: forwards of the `tiny` model (D=64, F=128: each expert's kernel is a few µs of
//    arithmetic at most), so a forward's compute stage is almost all dispatch; the kernels are not
//    subtracted, which makes these upper bounds. Its smallest jobs (1 token, 4 tokens routed by RRE)
//    run on the calling thread alone, by design (CpuCrew's SOLO_MAX_WORK); HETMOE_CREW_SOLO_WORK=0
//    sends them through the crew too;
//  - routing and combine at real widths (mixtral's gate D=4096 × 8 experts top-2, a fine-grained
//    gate D=2048 × 64 top-6, sigma-lite's RRE D=2048): those stages scale with D and E, and the
//    tiny model would hide them. Their experts are shrunk (F=16) since only route/combine are read.
// Every number is a median over forwards of the stage's own time (the runtime's per-stage clocks).
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createRuntime } from '../runtime/runtime.js'
import { loadModel } from '../experts/model.js'
import { synthModel, type SynthPreset } from '../experts/synth.js'
import { randomHidden, uniformTokens } from '../runtime/token-stream.js'
import { parseFlags, parseIntFlag } from '../runtime/cli/args.js'
import { benchMachine } from './support/machine.js'
import type { Command } from '../runtime/cli/command.js'

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]
const pct = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * p))]
const TOKENS = [1, 4, 16]
const WARMUP = 200

interface Case {
  part: 'dispatch' | 'width'
  model: string
  routing: string
  hidden: number
  tokens: number
  /** Medians over forwards, µs. */
  forwardUs: number
  forwardP90Us: number
  routeUs: number
  computeUs: number
  combineUs: number
  /** route + compute + combine medians: the overhead where compute is dispatch (part 'dispatch'). */
  overheadUs: number
}

const PRESETS: { part: Case['part']; preset: SynthPreset; routing: string }[] = [
  { part: 'dispatch', routing: 'rre top-1', preset: { name: 'tiny-rre', layers: 1, hidden: 64, inner: 128, ffn: 'swiglu', routing: { kind: 'rre', domains: 2, expertsPerDomain: 4 }, vocabSize: 32000 } },
  { part: 'dispatch', routing: 'gate top-2', preset: { name: 'tiny-gate', layers: 1, hidden: 64, inner: 128, ffn: 'swiglu', routing: { kind: 'gate', experts: 8, topK: 2, normalize: true }, vocabSize: 32000 } },
  { part: 'width', routing: 'rre top-1', preset: { name: 'sigma-lite-width', layers: 1, hidden: 2048, inner: 16, ffn: 'gelu', routing: { kind: 'rre', domains: 4, expertsPerDomain: 16 }, vocabSize: 32000 } },
  { part: 'width', routing: 'gate top-2', preset: { name: 'mixtral-width', layers: 1, hidden: 4096, inner: 16, ffn: 'swiglu', routing: { kind: 'gate', experts: 8, topK: 2, normalize: true }, vocabSize: 32000 } },
  { part: 'width', routing: 'gate top-6', preset: { name: 'fine-width', layers: 1, hidden: 2048, inner: 16, ffn: 'swiglu', routing: { kind: 'gate', experts: 64, topK: 6, normalize: false }, vocabSize: 32000 } },
]

export const bench: Command = {
  summary: 'per-layer overhead outside the kernels (routing, dispatch, combine) at decode sizes',
  usage: `Usage: hetmoe bench overhead [--iters N] [--threads N] [--json FILE]

Medians per forward of each stage of a layer at 1, 4 and 16 tokens: dispatch on the tiny model
(kernels of a few µs), routing and combine at real widths (D=2048-4096, 8-64 experts).

  --iters N    forwards per case after ${WARMUP} warm-up forwards (default 2000)
  --threads N  CPU worker threads (default: all cores)
  --json FILE  write the results as JSON`,
  async run(argv) {
    const { values } = parseFlags(argv, { iters: { type: 'string' }, threads: { type: 'string' }, json: { type: 'string' } })
    const iters = parseIntFlag(values.iters, '--iters', 2000, 10)
    const dir = mkdtempSync(join(tmpdir(), 'hetmoe-overhead-'))
    const results: Case[] = []
    try {
      for (const { part, preset, routing } of PRESETS) {
        const out = join(dir, preset.name)
        await synthModel({ preset, out })
        const model = await loadModel(out)
        const rt = await createRuntime({ model, gpu: 'off', ...(values.threads ? { cpuThreads: parseIntFlag(values.threads, '--threads', 1, 1) } : {}) })
        const D = preset.hidden
        for (const T of TOKENS) {
          const x = randomHidden(T, D, T)
          const ids = uniformTokens(T, preset.vocabSize, T)
          const o = new Float32Array(T * D)
          const total: number[] = []
          const route: number[] = []
          const compute: number[] = []
          const combine: number[] = []
          let before = rt.stats().layers[0].ms
          for (let i = 0; i < iters + WARMUP; i++) {
            const t0 = performance.now()
            await rt.forward(0, x, { tokenIds: ids, domain: 0, out: o })
            const t1 = performance.now()
            const after = rt.stats().layers[0].ms
            if (i >= WARMUP) {
              total.push((t1 - t0) * 1000)
              route.push((after.route - before.route) * 1000)
              compute.push((after.compute - before.compute) * 1000)
              combine.push((after.combine - before.combine) * 1000)
            }
            before = after
          }
          const c = { routeUs: median(route), computeUs: median(compute), combineUs: median(combine) }
          results.push({ part, model: preset.name, routing, hidden: D, tokens: T, forwardUs: median(total), forwardP90Us: pct(total, 0.9), ...c, overheadUs: c.routeUs + c.computeUs + c.combineUs })
          process.stderr.write(`overhead: ${preset.name} T=${T} done\n`)
        }
        await rt.close()
        model.close()
      }
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
    const machine = benchMachine()
    const f = (x: number, w: number) => x.toFixed(1).padStart(w)
    console.log(`per-layer stage medians, µs, ${iters} forwards per case (${machine.cpu}, ${machine.cores} cores)`)
    console.log('part      model              routing     tokens  forward  p90    route  dispatch+kernel  combine')
    for (const r of results)
      console.log(`${r.part.padEnd(9)} ${r.model.padEnd(18)} ${r.routing.padEnd(11)} ${String(r.tokens).padStart(6)} ${f(r.forwardUs, 8)} ${f(r.forwardP90Us, 6)} ${f(r.routeUs, 7)} ${f(r.computeUs, 16)} ${f(r.combineUs, 8)}`)
    console.log('dispatch rows: route + dispatch + combine is the whole overhead (kernels of a few µs included);')
    console.log('width rows: read route and combine (their experts are shrunk; dispatch+kernel there is not overhead).')
    if (values.json) writeFileSync(values.json, JSON.stringify({ machine, iters, results }, null, 2) + '\n')
    return 0
  },
}
