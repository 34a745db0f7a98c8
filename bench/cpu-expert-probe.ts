// CPU layer jobs at prefill sizes, against what the cost model charges for them (issue #6: at 4096
// tokens with a 25% budget, sigma-lite's one CPU expert a layer took 3.5-3.8 ms beside the GPU call,
// where the plan predicted 2.3; with a 10% budget its jobs of 8 experts ran 1.2-1.65x faster than one
// expert's FLOP rate says). Each job runs experts of layer 0 on the runtime's CPU backend and its crew:
//   - one expert with n tokens, with the calling thread waiting (as beside a GPU call at prefill
//     sizes) and joining (the crew's own rule);
//   - with --job N,N,...: one job of as many experts, each its count of tokens (as a hybrid prefill
//     layer leaves on the CPU), the calling thread waiting.
// Median and mean ms over the jobs, against CostModel.tCpu summed + cpuLayerS for this machine's
// calibration, and the job's dense-equivalent TFLOP/s. For a device call; prints one table:
//   node dist/bench/cpu-expert-probe.js MODEL_DIR [tokens=25,50,100,200,400] [jobs=15] [--job N,N,...]... [--json FILE]
import { writeFileSync } from 'node:fs'
import { loadModel } from '../experts/model.js'
import { Arena } from '../runtime/arena.js'
import { CpuCrew } from '../runtime/cpu-crew.js'
import { CpuBackend } from '../runtime/cpu-backend.js'
import { envConfig } from '../runtime/config.js'
import { machineCalibration } from '../runtime/placement.js'
import { randomHidden } from '../runtime/token-stream.js'
import { CostModel, expertShape } from '../scheduler/cost-model.js'

const args = process.argv.slice(2)
const jsonAt = args.indexOf('--json')
const jsonFile = jsonAt >= 0 ? args.splice(jsonAt, 2)[1] : undefined
const layerJobs: number[][] = []
for (let at; (at = args.indexOf('--job')) >= 0; ) layerJobs.push(args.splice(at, 2)[1].split(',').map(Number))
const [dir, tokensArg = '25,50,100,200,400', jobsArg = '15'] = args
const usage = 'usage: node dist/bench/cpu-expert-probe.js MODEL_DIR [tokens=25,50,100,200,400] [jobs=15] [--job N,N,...]... [--json FILE]'
if (!dir) throw new Error(usage)
const sizes = tokensArg.split(',').filter((x) => x !== '').map(Number)
const jobs = Number(jobsArg)
if ([...sizes, ...layerJobs.flat()].some((n) => !Number.isInteger(n) || n < 1) || !(jobs >= 1)) throw new Error(usage)
const median = (a: number[]) => [...a].sort((x, y) => x - y)[a.length >> 1]
const mean = (a: number[]) => a.reduce((s, x) => s + x, 0) / a.length

const model = await loadModel(dir)
const D = model.manifest.hiddenSize
const experts = model.manifest.layers[0].experts
const cases: { counts: number[]; join: false | undefined }[] = [
  ...sizes.flatMap((n) => [{ counts: [n], join: false as const }, { counts: [n], join: undefined }]),
  ...layerJobs.map((counts) => ({ counts, join: false as const })),
]
const maxN = Math.max(...cases.flatMap((c) => c.counts))
const maxK = Math.max(...cases.map((c) => c.counts.length))
if (maxK > experts.length) throw new Error(`a job of ${maxK} experts: layer 0 has ${experts.length}`)
const F = Math.max(...experts.map((e) => e.up.rows))
// The inputs, each expert's own output rows, and the job's scratch in the arena (its intermediate rows,
// packed copies).
const arena = new Arena({ bytes: (1 + maxK) * maxN * D * 4 + maxK * 4 * maxN * F * 4 + (16 << 20) })
const crew = new CpuCrew({ arena, threads: envConfig().cpuThreads })
const cpu = new CpuBackend(crew, arena, model)
const cost = new CostModel(await machineCalibration())
const hidden = arena.lease(maxN * D * 4)
const block = randomHidden(16, D, 3)
for (let r = 0; r < maxN; r += 16) hidden.f32(maxN * D).set(block.subarray(0, Math.min(16, maxN - r) * D), r * D)
const outRowsN = maxK * maxN
const out = arena.lease(outRowsN * D * 4)
// Token rows 0..maxN-1 (every expert reads from the first), then each expert's distinct output rows.
const rows = arena.lease((1 + maxK) * maxN * 4)
const r = rows.i32((1 + maxK) * maxN)
for (let i = 0; i < maxN; i++) r[i] = i
for (let k = 0; k < maxK; k++) for (let i = 0; i < maxN; i++) r[(1 + k) * maxN + i] = k * maxN + i
const results: { counts: number[]; join: string; ms: number; meanMs: number; predictedMs: number; tflops: number }[] = []
console.log(`cpu expert probe: ${dir}, layer 0, ${crew.threads} workers, ${jobs} jobs a case (predicted: CostModel.tCpu summed + cpuLayerS)`)
console.log('experts  tokens            calling thread  median ms  mean ms  predicted  median/predicted  TFLOP/s')
try {
  let first = 0
  for (const { counts, join } of cases) {
    const times: number[] = []
    for (let j = 0; j < jobs + 3; j++) {
      // Other experts each job: their weights come from memory, as cold experts' do.
      const ids = counts.map((_, k) => (first + k) % experts.length)
      first = (first + counts.length) % experts.length
      out.f32(outRowsN * D).fill(NaN)
      const t0 = performance.now()
      await cpu.run({ layer: 0, hidden: { offset: hidden.offset, rows: maxN }, out: { offset: out.offset, rows: outRowsN }, experts: counts.map((n, k) => ({ expert: ids[k], count: n, tokens: rows.offset, outRows: rows.offset + 4 * (1 + k) * maxN })) }, undefined, join)
      const ms = performance.now() - t0
      if (j >= 3) times.push(ms)
      const o = out.f32(outRowsN * D)
      counts.forEach((n, k) => {
        if (!Number.isFinite(o[(k * maxN + n) * D - 1])) throw new Error(`expert ${ids[k]}, ${n} tokens: its output row ${n - 1} was not written`)
      })
    }
    const shapes = counts.map((_, k) => expertShape(experts[k]))
    const total = counts.reduce((x, y) => x + y, 0)
    const predictedMs = 1e3 * (counts.reduce((s, n, k) => s + cost.tCpu(shapes[k], n), 0) + cost.cpuLayerS(shapes, total / counts.length))
    const ms = median(times)
    const tflops = counts.reduce((s, n, k) => s + n * shapes[k].flopsPerToken, 0) / (ms / 1e3) / 1e12
    const who = join === false ? 'waits' : 'crew rule'
    results.push({ counts, join: who, ms, meanMs: mean(times), predictedMs, tflops })
    const list = counts.length > 4 ? `${counts.slice(0, 4).join(',')},… (${total})` : counts.join(',')
    console.log(`${String(counts.length).padStart(7)}  ${list.padEnd(17)} ${who.padEnd(14)}  ${ms.toFixed(3).padStart(9)}  ${mean(times).toFixed(3).padStart(7)}  ${predictedMs.toFixed(3).padStart(9)}  ${(ms / predictedMs).toFixed(2).padStart(16)}  ${tflops.toFixed(2).padStart(7)}`)
  }
} finally {
  await crew.destroy()
  arena.close()
  model.close()
}
if (jsonFile) writeFileSync(jsonFile, JSON.stringify({ model: dir, threads: envConfig().cpuThreads, jobs, results }, null, 2))
