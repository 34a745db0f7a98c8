// One cold expert's CPU job at prefill sizes, against what the cost model charges for it (issue #6: at
// 4096 tokens with a 25% budget, sigma-lite's one CPU expert a layer took 3.5-3.8 ms beside the GPU
// call, where the plan predicted 2.3). Each job is one expert of layer 0 with n tokens, run by the
// runtime's CPU backend on its crew: with the calling thread waiting (as beside a GPU call at prefill
// sizes) and joining (the crew's own rule). Median ms over the jobs, against CostModel.tCpu +
// cpuLayerS for this machine's calibration. For a device call; prints one table:
//   node dist/bench/cpu-expert-probe.js MODEL_DIR [tokens=25,50,100,200,400] [jobs=15] [--json FILE]
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
const [dir, tokensArg = '25,50,100,200,400', jobsArg = '15'] = args
if (!dir) throw new Error('usage: node dist/bench/cpu-expert-probe.js MODEL_DIR [tokens=25,50,100,200,400] [jobs=15] [--json FILE]')
const sizes = tokensArg.split(',').map(Number)
const jobs = Number(jobsArg)
const median = (a: number[]) => [...a].sort((x, y) => x - y)[a.length >> 1]

const model = await loadModel(dir)
const D = model.manifest.hiddenSize
const maxN = Math.max(...sizes)
const F = Math.max(...model.manifest.layers[0].experts.map((e) => e.up.rows))
// The inputs and outputs, and the job's own scratch in the arena (its intermediate rows, packed copies).
const arena = new Arena({ bytes: 2 * maxN * D * 4 + 4 * maxN * F * 4 + (16 << 20) })
const crew = new CpuCrew({ arena, threads: envConfig().cpuThreads })
const cpu = new CpuBackend(crew, arena, model)
const cost = new CostModel(await machineCalibration())
const hidden = arena.lease(maxN * D * 4)
const block = randomHidden(16, D, 3)
for (let r = 0; r < maxN; r += 16) hidden.f32(maxN * D).set(block.subarray(0, Math.min(16, maxN - r) * D), r * D)
const out = arena.lease(maxN * D * 4)
const rows = arena.lease(maxN * 4)
rows.i32(maxN).forEach((_, i, a) => (a[i] = i))
const experts = model.manifest.layers[0].experts
const results: { tokens: number; join: string; ms: number; predictedMs: number }[] = []
console.log(`cpu expert probe: ${dir}, layer 0, ${crew.threads} workers, ${jobs} jobs a case (median ms; predicted: CostModel.tCpu + cpuLayerS)`)
console.log('tokens  calling thread  measured  predicted  measured/predicted')
try {
  for (const n of sizes) {
    for (const join of [false, undefined]) {
      const times: number[] = []
      for (let j = 0; j < jobs + 3; j++) {
        const e = j % experts.length // a different expert each job: its weights come from memory, as a cold expert's do
        out.f32(maxN * D).fill(NaN)
        const t0 = performance.now()
        await cpu.run({ layer: 0, hidden: { offset: hidden.offset, rows: maxN }, out: { offset: out.offset, rows: maxN }, experts: [{ expert: e, count: n, tokens: rows.offset, outRows: rows.offset }] }, undefined, join)
        const ms = performance.now() - t0
        if (j >= 3) times.push(ms)
        if (!Number.isFinite(out.f32(n * D)[n * D - 1])) throw new Error(`expert ${e}, ${n} tokens: output row ${n - 1} was not written`)
      }
      const shape = expertShape(experts[0])
      const predictedMs = 1e3 * (cost.tCpu(shape, n) + cost.cpuLayerS([shape]))
      const ms = median(times)
      const who = join === false ? 'waits' : 'crew rule'
      results.push({ tokens: n, join: who, ms, predictedMs })
      console.log(`${String(n).padStart(6)}  ${who.padEnd(14)}  ${ms.toFixed(3).padStart(8)}  ${predictedMs.toFixed(3).padStart(9)}  ${(ms / predictedMs).toFixed(2).padStart(18)}`)
    }
  }
} finally {
  await crew.destroy()
  arena.close()
  model.close()
}
if (jsonFile) writeFileSync(jsonFile, JSON.stringify({ model: dir, threads: envConfig().cpuThreads, jobs, results }, null, 2))
