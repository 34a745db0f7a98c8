// Replays a device call's hybrid case through planStreaming, layer by layer, and sets what it expects
// beside what the runtime measured: which cold experts a batch streams, the GPU share that gives, and
// the layer's time, against the run's GPU share and its CPU and GPU sides. It needs no GPU: the call's
// calibration, plan and run report (bench/results/<machine>/callN-<commit>/B/) and the model they ran.
//   node dist/bench/replay-streaming.js CALL_DIR [MODEL_DIR=/tmp/sl] [CASE=b4096-0.1] [--calibration FILE]
// --calibration: replay with another calibration (one measured later, with rates the call's lacked).
// Counts are each expert's token share × the batch (the planner's own estimate); a run's batches vary
// around them.
import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { CostModel, type Calibration } from '../scheduler/cost-model.js'
import { modelShapes, planStreaming, readModelFile, type PlanDocument } from '../scheduler/index.js'

const args = process.argv.slice(2)
const flag = args.indexOf('--calibration')
const calibrationFile = flag >= 0 ? args.splice(flag, 2)[1] : undefined
const [callDir, modelDir = '/tmp/sl', name = 'b4096-0.1'] = args
if (!callDir) {
  console.error('usage: node dist/bench/replay-streaming.js CALL_DIR [MODEL_DIR] [CASE] [--calibration FILE]')
  process.exit(2)
}
const B = join(callDir, 'B')
const json = <T>(path: string): T => JSON.parse(readFileSync(path, 'utf8')) as T
const calibration = json<Calibration>(calibrationFile ?? join(B, readdirSync(B).find((f) => f.startsWith('calibration-'))!))
const cost = new CostModel(calibration)
const plan = json<PlanDocument>(join(B, `place-${name}.json`))
const run = json<{ report: { perLayer: { msPerBatch: number; cpuMs?: number; gpuMs?: number; gpuShare: number }[] } }>(join(B, `run-${name}.json`)).report
const shapes = modelShapes(readModelFile(modelDir).manifest)
const ms = (s: number) => (1e3 * s).toFixed(2)
console.log(`${callDir}: ${name}, PCIe ${(calibration.pcie!.bytesPerS / 1e9).toFixed(1)} GB/s${calibration.pcie?.besideCpu ? `, beside the CPU ${(calibration.pcie.besideCpu.bytesPerS / 1e9).toFixed(1)} GB/s and the job x${calibration.pcie.besideCpu.cpuSlowdown.toFixed(2)}` : ''}`)
console.log('layer  streams     share   layer ms (without) | measured: share   layer ms    CPU ms    GPU ms')
for (const l of plan.layers) {
  const on = new Set(l.gpuExperts)
  const counts = plan.share[l.layer].map((p) => p * plan.batchTokens)
  const r = planStreaming(shapes[l.layer], counts, (e) => on.has(e), cost, plan.streamBytes, plan.batchTokens)
  const share = l.gpuTokenShare + r.stream.reduce((s, e) => s + plan.share[l.layer][e], 0)
  const m = run.perLayer[l.layer]
  console.log(
    `${String(l.layer).padStart(5)}  ${(r.stream.join(',') || '-').padEnd(10)} ${share.toFixed(3)}  ${ms(r.layerS).padStart(8)} (${ms(r.withoutS)}) |          ${m.gpuShare.toFixed(3)}  ${m.msPerBatch.toFixed(2).padStart(8)}  ${(m.cpuMs ?? 0).toFixed(2).padStart(8)}  ${(m.gpuMs ?? 0).toFixed(2).padStart(8)}`,
  )
}
