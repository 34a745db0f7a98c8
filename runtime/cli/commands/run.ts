import { arenaBytesFor, createRuntime } from '../../runtime.js'
import { runTokenStream, formatStreamReport } from '../../stream-runner.js'
import { zipfTokens } from '../../token-stream.js'
import { loadModel } from '../../../experts/model.js'
import { readTokenFile, checkTokenIds } from '../../../scheduler/token-file.js'
import { planForModel, readPlanFile, type PlanFileFacts } from '../../placement.js'
import { parseBytes, parseFlags, parseIntFlag } from '../args.js'
import { Progress } from '../progress.js'
import { UsageError, type Command } from '../command.js'

export const command: Command = {
  summary: 'run the MoE layers of a model over a token stream and report tokens/s per device',
  usage: `Usage: hetmoe run --model DIR (--tokens FILE | --synthetic N) [--plan FILE] [--batch B]
                  [--domain D] [--gpu off|auto|INDEX] [--gpu-mem SIZE] [--no-replace] [--warmup N]
                  [--json]

Runs every MoE layer of the model over the token stream, batch by batch, on GPU + CPU (placement
from --plan, or planned now from the stream), then prints tokens/s, the share of expert rows per
device and a per-layer time breakdown.

  --model DIR      a model directory (hetmoe synth / hetmoe import)
  --tokens FILE    token ids: whitespace-separated integers, or little-endian int32 if *.i32
  --synthetic N    N tokens drawn from Zipf(1.1) over the model's vocabulary instead
  --plan FILE      a placement plan from \`hetmoe place --out\`; the run then compares its tokens/s
                   with the plan's prediction for that batch size
  --batch B        tokens per batch (default: the plan's batch size, else 16)
  --domain D       RRE domain name or index (default 0)
  --gpu MODE       auto (default), off, or a device index
  --gpu-mem SIZE   GPU memory for experts, e.g. 20GiB (default: the plan's budget, else 80% of free)
  --no-replace     keep the placement as planned (no re-placement when the load drifts)
  --warmup N       untimed warm-up batches (repeats of the first) before timing (default: until
                   their forwards have taken 0.5 s, at least 1 and at most 200)
  --json           print the report as JSON

tokens/s is timed after the warm-up: page faults, GPU uploads, worker start, and the first ~100
forwards of each layer, which run slower while JavaScript compiles (16 batches of 256 after one
warm-up batch measured ~25% below 128 batches on the H100 machine).`,
  async run(argv) {
    const { values } = parseFlags(argv, {
      model: { type: 'string' },
      tokens: { type: 'string' },
      synthetic: { type: 'string' },
      plan: { type: 'string' },
      batch: { type: 'string' },
      domain: { type: 'string' },
      gpu: { type: 'string' },
      'gpu-mem': { type: 'string' },
      'no-replace': { type: 'boolean' },
      warmup: { type: 'string' },
      json: { type: 'boolean' },
    })
    if (!values.model) throw new UsageError('--model DIR is required')
    if (!values.tokens === !values.synthetic) throw new UsageError('give exactly one of --tokens FILE and --synthetic N')
    const gpu = values.gpu === undefined || values.gpu === 'auto' ? 'auto' : values.gpu === 'off' ? 'off' : parseIntFlag(values.gpu, '--gpu', 0, 0)
    const domain = values.domain === undefined ? 0 : /^\d+$/.test(values.domain) ? Number(values.domain) : values.domain
    const model = await loadModel(values.model)
    try {
      const facts: PlanFileFacts = {}
      const filePlan = values.plan ? readPlanFile(values.plan, model, facts) : undefined
      const batch = parseIntFlag(values.batch, '--batch', facts.batchTokens ?? 16, 1)
      const warmup = values.warmup === undefined ? ('auto' as const) : parseIntFlag(values.warmup, '--warmup', 0, 0)
      const gpuMemory = values['gpu-mem'] ? parseBytes(values['gpu-mem'], '--gpu-mem') : facts.budgetBytes
      const tokens = values.tokens
        ? readTokenFileFor(values.tokens, model.manifest.vocabSize)
        : zipfTokens(parseIntFlag(values.synthetic, '--synthetic', 0, 1), model.manifest.vocabSize, 1.1, 42)
      const plan = filePlan ?? (await planForModel(model, { tokens, gpu, batch, gpuMemory, domain })).plan
      const rt = await createRuntime({ model, gpu, gpuMemory, plan, arenaBytes: arenaBytesFor(model, batch), replace: !values['no-replace'] })
      rt.on('warning', (w: string) => console.error(`hetmoe: ${w}`))
      const bar = new Progress('run', Math.ceil(tokens.length / batch), { quiet: values.json })
      const ac = new AbortController()
      const onSigint = () => ac.abort(new Error('interrupted'))
      process.once('SIGINT', onSigint)
      try {
        const report = await runTokenStream(rt, { tokens, batch, domain, signal: ac.signal, warmup, onBatch: () => bar.tick() })
        bar.done()
        const stats = rt.stats()
        const vsPlan = planComparison(facts, batch, report.tokensPerS, stats.gpu.enabled)
        if (values.json) console.log(JSON.stringify({ model: model.dir, gpu: stats.gpu, cpuThreads: stats.cpuThreads, report, ...(vsPlan ? { plan: vsPlan } : {}) }, null, 2))
        else {
          console.log(`devices  ${stats.gpu.enabled ? `GPU ${stats.gpu.device} (${stats.gpu.residentExperts} resident experts) + ` : 'CPU only: '}${stats.cpuThreads} CPU threads`)
          // Streaming: copies of cold experts for single batches (of them, lookahead's for the next layer).
          if (stats.gpu.uploads > 0) console.log(`copies   ${stats.gpu.uploads} expert copies to the GPU for single batches; ${stats.gpu.prefetches} lookaheads started some a layer early`)
          console.log(formatStreamReport(report))
          if (vsPlan) console.log(`plan     predicted ${vsPlan.predictedTokensPerS.toFixed(1)} tokens/s at batch ${batch} (${vsPlan.prediction}); measured/predicted ${vsPlan.ratio.toFixed(2)}`)
        }
      } finally {
        process.off('SIGINT', onSigint)
        await rt.close()
      }
    } finally {
      model.close()
    }
    return 0
  },
}

/** The plan's prediction for this batch size, when it made one (decode at its batch size, prefill at
 *  its prefill size) and the run used the GPU it was made for. */
function planComparison(facts: PlanFileFacts, batch: number, tokensPerS: number, gpu: boolean): { prediction: 'decode' | 'prefill'; predictedTokensPerS: number; ratio: number } | undefined {
  const p = facts.predicted
  if (!p || !gpu) return undefined
  const at = batch === facts.batchTokens ? ('decode' as const) : batch === p.prefillTokens ? ('prefill' as const) : undefined
  if (!at) return undefined
  const predictedTokensPerS = at === 'decode' ? p.decodeTokensPerS : p.prefillTokensPerS
  return { prediction: at, predictedTokensPerS, ratio: tokensPerS / predictedTokensPerS }
}

function readTokenFileFor(path: string, vocabSize: number): Int32Array {
  const tokens = readTokenFile(path)
  checkTokenIds(tokens, vocabSize, path)
  return tokens
}
