// Compact tables from `hetmoe bench overhead --json` files (bench/overhead-xeon.sh prints them last):
//   node dist/bench/overhead-summary.js [--merge OUT.json] headline.json [name=variant.json ...]
// --merge writes the variants' files as one JSON object { name: file } (fewer files to carry back).
// Per variant and gap: the overhead (route + dispatch/kernel + combine medians, µs) of the dispatch
// models at 1/4/16 tokens; the crew's CPU (cores busy, gaps included) and how workers met the 16-token
// gate jobs; with --trace, where those joins' time went.
import { readFileSync, writeFileSync } from 'node:fs'

interface Row {
  part: string
  model: string
  tokens: number
  gapUs: number
  overheadUs: number
  forwardP90Us: number
  routeUs: number
  computeUs: number
  combineUs: number
  cpuPerIterUs: number
  wallPerIterUs: number
  crewCpuPerIterUs?: number
  mainCpuPerIterUs?: number
  postsPerForward?: number
  caughtPerForward?: number
  wokenPerForward?: number
  peekedPerForward?: number
  spinWindowUs?: number
  trace?: { jobs: number; postedUs: number; mainDoneUs: number; waitedUs: number; retiredUs: number; mainBlocks: number; numBlocks: number; entered: number; woken: number; sleepersAtPost: number; arrivalUs?: number; wakeCostUs?: number }
}
interface File {
  machine: Record<string, unknown>
  iters: number
  warmup?: number
  env?: Record<string, string>
  results: Row[]
}

const f = (x: number | undefined, w: number, d = 1) => (x === undefined || !Number.isFinite(x) ? '-' : x.toFixed(d)).padStart(w)
const load = (p: string): File | undefined => {
  try {
    return JSON.parse(readFileSync(p, 'utf8')) as File
  } catch {
    return undefined
  }
}

export function summarize(args: string[]): string {
  const out: string[] = []
  const [headline, ...rest] = args
  const h = headline ? load(headline) : undefined
  if (h) {
    const m = h.machine
    out.push(`machine: ${m.cpu}, ${m.cores} cores, ${m.isa}; clock ${m.clocksource}, performance.now ${m.performanceNowNs} ns, routeLogits16x8 ${m.routeLogits16x8Ns} ns; commit ${m.commit}`)
    out.push(`headline (${headline}): overhead = route + dispatch/kernel + combine, medians µs, ${h.iters} forwards a case (width rows: route | combine)`)
    out.push('model              gap |     T=1     T=4    T=16 |  p90 T=16')
    const keys = [...new Set(h.results.map((r) => `${r.model}\t${r.gapUs}`))]
    for (const k of keys) {
      const [model, gap] = k.split('\t')
      const rs = h.results.filter((r) => r.model === model && String(r.gapUs) === gap)
      const cell = (r: Row | undefined) => (r ? (r.part === 'width' ? `${f(r.routeUs, 3, 0)}|${f(r.combineUs, 3, 0)}` : f(r.overheadUs, 7)) : '-').padStart(7)
      const at = (T: number) => rs.find((r) => r.tokens === T)
      out.push(`${model.padEnd(18)} ${gap.padStart(4)} | ${cell(at(1))} ${cell(at(4))} ${cell(at(16))} | ${f(at(16)?.forwardP90Us, 8)}`)
    }
  }
  const variants = rest.map((a) => {
    const i = a.indexOf('=')
    return { name: a.slice(0, i), file: load(a.slice(i + 1)) }
  })
  if (variants.length) {
    out.push('')
    out.push('variants: overhead medians µs (rre / gate at T=1,4,16); crew = workers\' CPU / wall (gaps included);')
    out.push('g16 = the 16-token gate case: workers caught spinning / woken / found on a peek, per forward')
    out.push('variant            gap |  rre1  rre4 rre16 | gate1 gate4 gate16 | crew  main | g16 caught woken peek')
    out.push('(crew, main: cores busy, the workers\' and the calling thread\'s CPU over the wall time of all six cases)')
    for (const { name, file } of variants) {
      if (!file) {
        out.push(`${name.padEnd(18)} (no results)`)
        continue
      }
      const gaps = [...new Set(file.results.map((r) => r.gapUs))]
      for (const gap of gaps) {
        const rs = file.results.filter((r) => r.gapUs === gap)
        const at = (model: string, T: number) => rs.find((r) => r.model === model && r.tokens === T)
        const o = (model: string, T: number, w: number) => f(at(model, T)?.overheadUs, w)
        const g16 = at('tiny-gate', 16)
        // Cores busy over the whole run of this gap (every case's time, gaps included).
        let crew = 0
        let main = 0
        let wall = 0
        for (const r of rs) {
          crew += r.crewCpuPerIterUs ?? NaN
          main += r.mainCpuPerIterUs ?? NaN
          wall += r.wallPerIterUs
        }
        wall = wall || NaN
        out.push(
          `${name.padEnd(18)} ${String(gap).padStart(4)} | ${o('tiny-rre', 1, 5)} ${o('tiny-rre', 4, 5)} ${o('tiny-rre', 16, 5)} | ${o('tiny-gate', 1, 5)} ${o('tiny-gate', 4, 5)} ${o('tiny-gate', 16, 6)} | ${f(crew / wall, 4)} ${f(main / wall, 5)} |` +
            ` ${f(g16?.caughtPerForward, 10)} ${f(g16?.wokenPerForward, 5)} ${f(g16?.peekedPerForward, 4)}`,
        )
      }
    }
    const traced = variants.filter((v) => v.file?.results.some((r) => r.trace))
    if (traced.length) {
      out.push('')
      out.push('16-token gate joins (--trace), medians, µs after the native call began: posted, main done, waited, retired | main blocks / blocks,')
      out.push('workers entered, woken, asleep at post | the lazy wake\'s estimates at the end (µs): a woken worker\'s arrival, the waker\'s cost per worker')
      for (const { name, file } of traced)
        for (const r of file!.results)
          if (r.trace && r.model === 'tiny-gate' && r.tokens === 16)
            out.push(
              `${name.padEnd(18)} ${r.model.padEnd(9)} gap ${String(r.gapUs).padStart(4)} T=${String(r.tokens).padStart(2)} ${f(r.trace.postedUs, 5)} ${f(r.trace.mainDoneUs, 6)} ${f(r.trace.waitedUs, 6)} ${f(r.trace.retiredUs, 6)} | ${f(r.trace.mainBlocks, 3, 0)} /${f(r.trace.numBlocks, 3, 0)} ${f(r.trace.entered, 3, 0)} ${f(r.trace.woken, 3, 0)} ${f(r.trace.sleepersAtPost, 3, 0)} | ${f(r.trace.arrivalUs, 4, 0)} ${f(r.trace.wakeCostUs, 3, 0)}`,
            )
    }
  }
  return out.join('\n')
}

if (process.argv[1]?.endsWith('overhead-summary.js')) {
  let args = process.argv.slice(2)
  if (args[0] === '--merge') {
    const merged: Record<string, File | null> = {}
    for (const a of args.slice(3)) merged[a.slice(0, a.indexOf('='))] = load(a.slice(a.indexOf('=') + 1)) ?? null
    writeFileSync(args[1], JSON.stringify(merged, null, 1) + '\n')
    args = args.slice(2)
  }
  console.log(summarize(args))
}
