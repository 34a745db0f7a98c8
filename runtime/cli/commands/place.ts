// `hetmoe place`: which experts go on the GPU for a model, a workload and a GPU memory budget.
import { parseBytes, parseFlags, parseIntFlag } from '../args.js'
import { UsageError, type Command } from '../command.js'
import { domainFromFlag, forFlag, modelFromFlag, profileFromFlags } from '../../../scheduler/cli-support.js'
import { CostModel, type Calibration } from '../../../scheduler/cost-model.js'
import { describeCalibration } from '../../../scheduler/calibrate.js'
import { cachedCalibration, measureCalibration } from '../../calibration.js'
import { machineCalibration, withReferenceGpu } from '../../placement.js'
import { writeDocument, readDocument } from '../../../scheduler/document.js'
import { makePlan, withRouting, type PlanDocument } from '../../../scheduler/plan-report.js'
import { HetmoeError } from '../../errors.js'
import { measureRouteS } from '../../route-cost.js'

const PREFILL_TOKENS = 4096

export const command: Command = {
  summary: 'choose GPU-resident experts for a GPU memory budget and predict throughput',
  usage: `Usage: hetmoe place --model DIR (--tokens FILE | --profile FILE) --gpu-mem SIZE
                    [--domain D] [--batch N] [--out FILE] [--json]

Chooses the experts of every layer to keep on the GPU so that the predicted time per batch is
smallest (CPU and GPU compute each layer concurrently), within the GPU memory budget, from the
model's expert sizes, a load profile and this machine's calibration.

  --model DIR          the model directory (manifest.msgpack + weights.bin)
  --tokens FILE        token ids (text, or raw int32 if FILE ends in .i32); RRE models only
  --profile FILE       a profile from \`hetmoe profile\` or a LoadTracker (any model)
  --gpu-mem SIZE       GPU memory for expert weights, e.g. 20GiB, 512MiB
  --domain D           with --tokens: the requests' domain (name or index); default all evenly
  --batch N            tokens per forward to optimise for; default 1 (single-stream decode)
  --stream-mem SIZE    GPU memory kept for weights streamed per batch; default two experts' worth
                       when --gpu-mem holds at least eight, else 0
  --calibration FILE   cost-model calibration (JSON) to use instead of this machine's cached one
  --recalibrate        measure this machine again instead of using the cached calibration
  --out FILE           write the plan: msgpack if FILE ends in .msgpack, else JSON
  --json               print the plan as JSON

Without a GPU in the calibration, GPU and PCIe figures come from the H100 reference numbers in
DESIGN.md, and the report says so.`,
  async run(argv) {
    const { values } = parseFlags(argv, {
      model: { type: 'string' }, tokens: { type: 'string' }, profile: { type: 'string' }, 'gpu-mem': { type: 'string' },
      domain: { type: 'string' }, batch: { type: 'string' }, 'stream-mem': { type: 'string' }, calibration: { type: 'string' },
      recalibrate: { type: 'boolean' }, out: { type: 'string' }, json: { type: 'boolean' },
    })
    if (values['gpu-mem'] === undefined) throw new UsageError('--gpu-mem SIZE is required (e.g. --gpu-mem 20GiB)')
    const budgetBytes = parseBytes(values['gpu-mem'], '--gpu-mem')
    const batchTokens = parseIntFlag(values.batch, '--batch', 1, 1)
    const streamBytes = values['stream-mem'] === undefined ? undefined : parseBytes(values['stream-mem'], '--stream-mem')
    const model = modelFromFlag(values.model)
    const profile = profileFromFlags(model, values)
    const calibration = await calibrationFor(values.calibration, values.recalibrate ?? false)
    // Routing is timed on the model itself (tens of ms), so that the prediction covers it too: after
    // an idle gap as long as the layer's predicted time without it (the plan does not depend on it:
    // every placement pays the same routing).
    const domain = domainFromFlag(values.domain)
    const options = { budgetBytes, batchTokens, streamBytes, prefillTokens: PREFILL_TOKENS }
    const cost = new CostModel(calibration)
    const draft = makePlan(model.manifest, profile, cost, options)
    const L = model.manifest.layers.length
    const prefillRouteS = measureRouteS(model, PREFILL_TOKENS, domain, PREFILL_TOKENS / draft.predicted.prefillTokensPerS / L)
    const routeS = {
      batch: batchTokens === PREFILL_TOKENS ? prefillRouteS : measureRouteS(model, batchTokens, domain, batchTokens / draft.predicted.decodeTokensPerS / L),
      prefill: prefillRouteS,
    }
    const plan = withRouting(draft, routeS)
    if (values.out) forFlag('--out', () => writeDocument(values.out!, plan))
    if (values.json) console.log(JSON.stringify(plan, null, 2))
    else console.log(formatPlan(plan, calibration, model.manifest.layers.map((l) => l.experts.length)) + (values.out ? `\nplan written to ${values.out}` : ''))
    return 0
  },
}

async function calibrationFor(file: string | undefined, refresh: boolean): Promise<Calibration> {
  if (file) {
    const c = forFlag('--calibration', () => {
      const d = readDocument(file, 'calibration') as Calibration
      if (d?.format !== 'hetmoe-calibration') throw new HetmoeError('BAD_INPUT', `${file} is not a hetmoe calibration`)
      return d
    })
    return withReferenceGpu(c)
  }
  if (refresh) await measureCalibration({ log: (l) => process.stderr.write(l + '\n') })
  else if (!cachedCalibration()) process.stderr.write('hetmoe place: no runtime calibration cached for this machine; using a quick JavaScript estimate of the CPU (run `hetmoe calibrate` for measured rates)\n')
  return machineCalibration()
}

const gib = (b: number) => (b >= 2 ** 30 ? `${(b / 2 ** 30).toFixed(2)} GiB` : `${(b / 2 ** 20).toFixed(1)} MiB`)
const us = (x: number) => (x >= 1000 ? `${(x / 1000).toFixed(2)} ms` : `${x.toFixed(1)} µs`)
const pct = (x: number) => `${(100 * x).toFixed(1)}%`
const rate = (x: number) => (x >= 1e4 ? `${(x / 1e3).toFixed(1)}k` : x.toFixed(1))

function ranges(xs: number[]): string {
  const out: string[] = []
  for (let i = 0; i < xs.length; ) {
    let j = i
    while (j + 1 < xs.length && xs[j + 1] === xs[j] + 1) j++
    out.push(j > i ? `${xs[i]}-${xs[j]}` : `${xs[i]}`)
    i = j + 1
  }
  return out.join(',') || '—'
}

export function formatPlan(p: PlanDocument, c: Calibration, expertsPerLayer: number[]): string {
  const fit = (s: string) => (s.length > 38 ? `${s.slice(0, s.lastIndexOf(',', 36))},…` : s) // the full list is in --json / --out
  const rows = p.layers.map((l) => `${String(l.layer).padEnd(7)}${`${l.gpuExperts.length}/${expertsPerLayer[l.layer]}`.padEnd(9)}${fit(ranges(l.gpuExperts)).padEnd(40)}${gib(l.gpuBytes).padStart(11)}${pct(l.gpuTokenShare).padStart(9)}`)
  const n = p.layers.reduce((s, l) => s + l.gpuExperts.length, 0)
  return [
    `${p.model}: GPU budget ${gib(p.budgetBytes)} (of it ${gib(p.streamBytes)} kept for streaming), optimised for batches of ${p.batchTokens} token${p.batchTokens === 1 ? '' : 's'}${p.exact ? '' : ' (heuristic search)'}`,
    `profile: ${p.profile.tokens} tokens, ${p.profile.source}`,
    '',
    `layer  on GPU   experts                                      bytes   tokens`,
    ...rows,
    `${'total'.padEnd(7)}${String(n).padEnd(49)}${gib(p.gpuBytes).padStart(11)}${pct(p.gpuTokenShare).padStart(9)}`,
    '',
    `predicted, MoE layers only (routing ${us(p.predicted.routeUs.batch)} a layer at batch ${p.batchTokens}, ${us(p.predicted.routeUs.prefill)} at ${p.predicted.prefillTokens}, measured here):`,
    `  decode  (batch ${p.batchTokens})`.padEnd(24) + `${rate(p.predicted.decodeTokensPerS)} tokens/s   (CPU only ${rate(p.predicted.cpuOnlyDecodeTokensPerS)})`,
    `  prefill (batch ${p.predicted.prefillTokens})`.padEnd(24) + `${rate(p.predicted.prefillTokensPerS)} tokens/s   (CPU only ${rate(p.predicted.cpuOnlyPrefillTokensPerS)})`,
    '',
    describeCalibration(c),
  ].join('\n')
}
