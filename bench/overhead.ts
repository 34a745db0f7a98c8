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
//
// --gap-us: busy work on the calling thread between forwards (not timed), as a decode step's other
// work (attention) between its MoE layers: longer than the workers' idle spin, it finds them asleep.
// Each case also says what it cost in CPU (all threads, per forward and gap, against the wall time:
// spinning workers show as more cores busy), how the crew's workers met its jobs (spinning or woken
// from sleep), and with --trace where a joined job's time went (native/cpu/crew.h, JoinTrace).
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createRuntime } from '../runtime/runtime.js'
import { loadModel } from '../experts/model.js'
import { synthModel, type SynthPreset } from '../experts/synth.js'
import { randomHidden, uniformTokens } from '../runtime/token-stream.js'
import { crewOf } from '../runtime/cpu-crew.js'
import { GateRouter } from '../scheduler/route-gate.js'
import { allocSelection } from '../scheduler/selection.js'
import { native } from '../runtime/native.js'
import { parseFlags, parseIntFlag } from '../runtime/cli/args.js'
import { benchMachine } from './support/machine.js'
import { UsageError, type Command } from '../runtime/cli/command.js'

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]
const pct = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * p))]
const TOKENS = [1, 4, 16]
/** Forwards over every token count before a model's first case: V8 optimises the forward path's
 *  functions after thousands of calls, and with 200 warm-up forwards a case the first cases ran
 *  half-optimised (tiny-rre at 1 token 9.4 µs against 5.5 after 3000, 2-core VM). */
const MODEL_WARMUP = 3000

/** On-CPU nanoseconds of each of these threads of this process (Linux schedstat; absent where unreadable). */
function cpuNs(tids: number[]): Map<number, number> {
  const ns = new Map<number, number>()
  for (const tid of tids) {
    if (!tid) continue
    try {
      ns.set(tid, Number(readFileSync(`/proc/self/task/${tid}/schedstat`, 'utf8').split(' ')[0]))
    } catch {
      // A worker that left (replaced after a death), or no schedstat: not counted.
    }
  }
  return ns
}
/** CPU ns of `after`'s threads since `before` (a thread that started meanwhile counts from 0); NaN if none was readable. */
function cpuNsSince(before: Map<number, number>, after: Map<number, number>): number {
  if (after.size === 0) return NaN
  let ns = 0
  for (const [tid, v] of after) ns += v - (before.get(tid) ?? 0)
  return ns
}

interface Case {
  part: 'dispatch' | 'width'
  model: string
  routing: string
  hidden: number
  tokens: number
  /** Busy µs on the calling thread before each forward (not timed). */
  gapUs: number
  /** Medians over forwards, µs. */
  forwardUs: number
  forwardP90Us: number
  routeUs: number
  computeUs: number
  combineUs: number
  /** route + compute + combine medians: the overhead where compute is dispatch (part 'dispatch'). */
  overheadUs: number
  /** Process CPU time (every thread: V8's compiler and GC threads too) and wall time per forward, gap
   *  included; cpu / wall = cores busy. */
  cpuPerIterUs: number
  wallPerIterUs: number
  /** On-CPU time of the crew's workers, and of the calling thread, per forward, gap included (Linux
   *  schedstat): workers spinning through the gaps show here. */
  crewCpuPerIterUs: number
  mainCpuPerIterUs: number
  /** Mean forward, µs (the median's tail). */
  forwardMeanUs: number
  /** Jobs posted to the crew per forward (0: every job ran on the calling thread alone). */
  postsPerForward: number
  /** Workers' arrivals at posted jobs, per forward: caught while spinning, or woken from sleep. */
  caughtPerForward: number
  wokenPerForward: number
  /** ... or found by a sleeping worker's own look at the board (peek), per forward. */
  peekedPerForward: number
  /** The workers' spin windows at the end (µs, median over workers). */
  spinWindowUs: number
  /** --trace: medians over the case's joined jobs, µs after the native call's start: posted (parse +
   *  post), mainDone (the calling thread's last block), waited (the workers' last blocks), retired;
   *  the calling thread's share of the blocks, workers that went in, workers the join woke. */
  trace?: { jobs: number; postedUs: number; mainDoneUs: number; waitedUs: number; retiredUs: number; mainBlocks: number; numBlocks: number; entered: number; woken: number; sleepersAtPost: number; arrivalUs: number; wakeCostUs: number }
}

const PRESETS: { part: Case['part']; preset: SynthPreset; routing: string }[] = [
  { part: 'dispatch', routing: 'rre top-1', preset: { name: 'tiny-rre', layers: 1, hidden: 64, inner: 128, ffn: 'swiglu', routing: { kind: 'rre', domains: 2, expertsPerDomain: 4 }, vocabSize: 32000 } },
  { part: 'dispatch', routing: 'gate top-2', preset: { name: 'tiny-gate', layers: 1, hidden: 64, inner: 128, ffn: 'swiglu', routing: { kind: 'gate', experts: 8, topK: 2, normalize: true }, vocabSize: 32000 } },
  { part: 'width', routing: 'rre top-1', preset: { name: 'sigma-lite-width', layers: 1, hidden: 2048, inner: 16, ffn: 'gelu', routing: { kind: 'rre', domains: 4, expertsPerDomain: 16 }, vocabSize: 32000 } },
  { part: 'width', routing: 'gate top-2', preset: { name: 'mixtral-width', layers: 1, hidden: 4096, inner: 16, ffn: 'swiglu', routing: { kind: 'gate', experts: 8, topK: 2, normalize: true }, vocabSize: 32000 } },
  { part: 'width', routing: 'gate top-6', preset: { name: 'fine-width', layers: 1, hidden: 2048, inner: 16, ffn: 'swiglu', routing: { kind: 'gate', experts: 64, topK: 6, normalize: false }, vocabSize: 32000 } },
]

/** What the calling thread's JavaScript and clock cost on this machine, to set the stage timings of
 *  two machines side by side: the clock source, one performance.now() in ns, and a fixed piece of
 *  routing (top-2 of 8 experts for 16 tokens, GateRouter.routeLogits) in ns. */
function timerProbe(): { clocksource: string; performanceNowNs: number; routeLogits16x8Ns: number } {
  let clocksource = 'unknown'
  try {
    clocksource = readFileSync('/sys/devices/system/clocksource/clocksource0/current_clocksource', 'utf8').trim()
  } catch {}
  const per = (n: number, f: () => void) => {
    for (let i = 0; i < n / 10; i++) f()
    const best: number[] = []
    for (let r = 0; r < 5; r++) {
      const t0 = process.hrtime.bigint()
      for (let i = 0; i < n; i++) f()
      best.push(Number(process.hrtime.bigint() - t0) / n)
    }
    return Math.min(...best)
  }
  let sink = 0
  const performanceNowNs = per(200_000, () => void (sink += performance.now()))
  const router = new GateRouter({ weight: new Float32Array(8), numExperts: 8, hiddenSize: 1, topK: 2, normalize: true })
  const logits = Float64Array.from({ length: 16 * 8 }, (_, i) => Math.sin(i * 1.3))
  const sel = allocSelection(8, 32)
  const routeLogits16x8Ns = per(20_000, () => void router.routeLogits(logits, 16, sel))
  return { clocksource, performanceNowNs: Math.round(performanceNowNs), routeLogits16x8Ns: Math.round(routeLogits16x8Ns + sink * 0) }
}

export const bench: Command = {
  summary: 'per-layer overhead outside the kernels (routing, dispatch, combine) at decode sizes',
  usage: `Usage: hetmoe bench overhead [--iters N] [--warmup N] [--threads N] [--gap-us N[,N...]] [--models A,B] [--trace] [--json FILE]

Medians per forward of each stage of a layer at 1, 4 and 16 tokens: dispatch on the tiny model
(kernels of a few µs), routing and combine at real widths (D=2048-4096, 8-64 experts).

  --iters N      forwards per case (default 2000)
  --warmup N     warm-up forwards before each case (default 1000), after ${MODEL_WARMUP} over all token
                 counts before a model's first case (--warmup 200 --model-warmup 0: as until 2026-12)
  --model-warmup N  (default ${MODEL_WARMUP})
  --threads N    CPU worker threads (default: all cores)
  --gap-us LIST  busy µs on the calling thread before every forward, not timed (a decode step's other
                 work between MoE layers); each value is a case of its own (default 0)
  --models LIST  only these models (${PRESETS.map((p) => p.preset.name).join(', ')})
  --trace        also record where joined jobs' time went (the join's own clock, ~0.1 µs a job)
  --json FILE    write the results as JSON

The idle spin of the crew's workers comes from HETMOE_CREW_IDLE_SPIN_US / _MAX_US (README).`,
  async run(argv) {
    const { values } = parseFlags(argv, { iters: { type: 'string' }, warmup: { type: 'string' }, 'model-warmup': { type: 'string' }, threads: { type: 'string' }, json: { type: 'string' }, 'gap-us': { type: 'string' }, models: { type: 'string' }, trace: { type: 'boolean' } })
    const iters = parseIntFlag(values.iters, '--iters', 2000, 10)
    const WARMUP = parseIntFlag(values.warmup, '--warmup', 1000, 0)
    const modelWarmup = parseIntFlag(values['model-warmup'], '--model-warmup', MODEL_WARMUP, 0)
    const gaps = (values['gap-us'] ?? '0').split(',').map((g) => parseIntFlag(g, '--gap-us', 0, 0))
    const known = PRESETS.map((p) => p.preset.name)
    const models = values.models?.split(',') ?? known
    for (const m of models) if (!known.includes(m)) throw new UsageError(`--models: unknown model "${m}" (${known.join(', ')})`)
    const trace = values.trace === true
    const dir = mkdtempSync(join(tmpdir(), 'hetmoe-overhead-'))
    const results: Case[] = []
    const busy = (us: number) => {
      const end = performance.now() + us / 1000
      while (performance.now() < end);
    }
    const a = native()
    const tr = new Float64Array(12)
    if (trace) {
      a.crewTrace(true)
      a.crewLastJoin(tr)
    }
    try {
      for (const { part, preset, routing } of PRESETS.filter((p) => models.includes(p.preset.name))) {
        const out = join(dir, preset.name)
        await synthModel({ preset, out })
        const model = await loadModel(out)
        const rt = await createRuntime({ model, gpu: 'off', ...(values.threads ? { cpuThreads: parseIntFlag(values.threads, '--threads', 1, 1) } : {}) })
        const crew = crewOf(rt.arena)!
        const D = preset.hidden
        for (let i = 0; i < modelWarmup; i++) {
          const T = TOKENS[i % TOKENS.length]
          await rt.forward(0, randomHidden(T, D, i), { tokenIds: uniformTokens(T, preset.vocabSize, i), domain: 0 })
        }
        for (const gapUs of gaps)
          for (const T of TOKENS) {
            const x = randomHidden(T, D, T)
            const ids = uniformTokens(T, preset.vocabSize, T)
            const o = new Float32Array(T * D)
            const total: number[] = []
            const route: number[] = []
            const compute: number[] = []
            const combine: number[] = []
            const traces: number[][] = []
            let before = rt.stats().layers[0].ms
            let crew0 = crew.stats()
            let cpu0 = process.cpuUsage()
            let crewNs0 = new Map<number, number>()
            let mainNs0 = new Map<number, number>()
            let wall0 = performance.now()
            for (let i = 0; i < iters + WARMUP; i++) {
              if (i === WARMUP) {
                crew0 = crew.stats()
                crewNs0 = cpuNs(crew0.tids)
                mainNs0 = cpuNs([process.pid])
                cpu0 = process.cpuUsage()
                wall0 = performance.now()
              }
              if (gapUs) busy(gapUs)
              const t0 = performance.now()
              await rt.forward(0, x, { tokenIds: ids, domain: 0, out: o })
              const t1 = performance.now()
              const after = rt.stats().layers[0].ms
              if (i >= WARMUP) {
                total.push((t1 - t0) * 1000)
                route.push((after.route - before.route) * 1000)
                compute.push((after.compute - before.compute) * 1000)
                combine.push((after.combine - before.combine) * 1000)
                if (trace) {
                  // A forward joins at most one job here (no shared experts): its trace, if it joined one.
                  const seq = tr[9]
                  if (a.crewLastJoin(tr)[9] !== seq) traces.push(Array.from(tr))
                }
              }
              before = after
            }
            const wall = (performance.now() - wall0) * 1000
            const cpu = process.cpuUsage(cpu0)
            const mainNs = cpuNsSince(mainNs0, cpuNs([process.pid]))
            const crew1 = crew.stats()
            const crewNs = crew1.started ? cpuNsSince(crewNs0, cpuNs(crew1.tids)) : 0
            const c = { routeUs: median(route), computeUs: median(compute), combineUs: median(combine) }
            const col = (k: number) => median(traces.map((r) => r[k]))
            results.push({
              part, model: preset.name, routing, hidden: D, tokens: T, gapUs, forwardUs: median(total), forwardP90Us: pct(total, 0.9), ...c,
              overheadUs: c.routeUs + c.computeUs + c.combineUs,
              cpuPerIterUs: (cpu.user + cpu.system) / iters,
              wallPerIterUs: wall / iters,
              crewCpuPerIterUs: crewNs / 1000 / iters,
              mainCpuPerIterUs: mainNs / 1000 / iters,
              forwardMeanUs: total.reduce((x, y) => x + y, 0) / total.length,
              postsPerForward: (crew1.posts - crew0.posts) / iters,
              caughtPerForward: (crew1.caughtSpinning - crew0.caughtSpinning) / iters,
              wokenPerForward: (crew1.wokenFromSleep - crew0.wokenFromSleep) / iters,
              peekedPerForward: (crew1.foundOnPeek - crew0.foundOnPeek) / iters,
              spinWindowUs: median(crew1.windowUs),
              ...(trace && traces.length ? { trace: { jobs: traces.length, postedUs: col(0), mainDoneUs: col(1), waitedUs: col(2), retiredUs: col(3), mainBlocks: col(4), numBlocks: col(5), sleepersAtPost: col(6), woken: col(7), entered: col(8), arrivalUs: traces[traces.length - 1][10], wakeCostUs: traces[traces.length - 1][11] } } : {}),
            })
            process.stderr.write(`overhead: ${preset.name} T=${T} gap ${gapUs} µs done\n`)
          }
        await rt.close()
        model.close()
      }
    } finally {
      if (trace) a.crewTrace(false)
      rmSync(dir, { recursive: true, force: true })
    }
    const machine = { ...benchMachine(), ...timerProbe() }
    const f = (x: number, w: number, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : '-').padStart(w)
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => k.startsWith('HETMOE_') && k !== 'HETMOE_COMMIT'))
    console.log(`per-layer stage medians, µs, ${iters} forwards per case (${machine.cpu}, ${machine.cores} cores)${Object.keys(env).length ? ' ' + JSON.stringify(env) : ''}`)
    console.log(`clock ${machine.clocksource}: performance.now() ${machine.performanceNowNs} ns; routeLogits 16x8 top-2 ${machine.routeLogits16x8Ns} ns`)
    console.log('part      model              routing     gap tokens  forward  p90    route  dispatch+kernel  combine  cores  crew  posts caught woken peek window')
    for (const r of results)
      console.log(
        `${r.part.padEnd(9)} ${r.model.padEnd(18)} ${r.routing.padEnd(11)} ${String(r.gapUs).padStart(4)} ${String(r.tokens).padStart(5)} ${f(r.forwardUs, 8)} ${f(r.forwardP90Us, 6)} ${f(r.routeUs, 7)} ${f(r.computeUs, 16)} ${f(r.combineUs, 8)}` +
          ` ${f(r.cpuPerIterUs / r.wallPerIterUs, 6)} ${f(r.crewCpuPerIterUs / r.wallPerIterUs, 5)} ${f(r.postsPerForward, 6, 2)} ${f(r.caughtPerForward, 6, 1)} ${f(r.wokenPerForward, 5, 1)} ${f(r.peekedPerForward, 4, 1)} ${f(r.spinWindowUs, 6, 0)}`,
      )
    console.log('dispatch rows: route + dispatch + combine is the whole overhead (kernels of a few µs included);')
    console.log('width rows: read route and combine (their experts are shrunk; dispatch+kernel there is not overhead).')
    console.log('cores / crew: CPU time of all threads / of the crew\'s workers, over wall time, gaps included; posts: jobs posted to the crew per forward;')
    console.log('caught / woken / peek: workers arriving at a posted job spinning / woken / on their own look from sleep, per forward; window: idle spin, µs.')
    if (trace) {
      console.log('joined jobs (medians, µs after the join call began): posted  mainDone  waited  retired | main blocks / blocks, entered, woken, asleep at post')
      for (const r of results)
        if (r.trace)
          console.log(
            `  ${r.model.padEnd(10)} gap ${String(r.gapUs).padStart(4)} T=${String(r.tokens).padStart(2)}  ${f(r.trace.postedUs, 6)} ${f(r.trace.mainDoneUs, 8)} ${f(r.trace.waitedUs, 7)} ${f(r.trace.retiredUs, 8)} | ${f(r.trace.mainBlocks, 3, 0)} / ${f(r.trace.numBlocks, 3, 0)} ${f(r.trace.entered, 4, 0)} ${f(r.trace.woken, 4, 0)} ${f(r.trace.sleepersAtPost, 4, 0)}`,
          )
    }
    if (values.json) writeFileSync(values.json, JSON.stringify({ machine, iters, warmup: WARMUP, modelWarmup, gaps, env, results }, null, 2) + '\n')
    return 0
  },
}
