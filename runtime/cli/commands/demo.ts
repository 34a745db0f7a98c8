import { createRuntime } from '../../runtime.js'
import { runTokenStream, formatStreamReport } from '../../stream-runner.js'
import { zipfTokens } from '../../token-stream.js'
import { loadModel } from '../../../experts/model.js'
import { layerForwardRef } from '../../../experts/reference.js'
import { relativeError } from '../../../experts/formats.js'
import { planForModel } from '../../placement.js'
import { parseFlags, parseIntFlag } from '../args.js'
import { Progress } from '../progress.js'
import { cachedPresetModel } from '../../model-cache.js'
import type { Command } from '../command.js'

export const command: Command = {
  summary: 'the demo (npm start): synthesise the small model, plan placement, run a Zipf token stream, check outputs',
  usage: `Usage: hetmoe demo [--tokens N] [--batch B] [--gpu off] [--json]

First run synthesises the 'small' model (4 layers × 32 experts, 1024 × 2816, SwiGLU, RRE; about
2.2 GB, cached in $HETMOE_CACHE_DIR or ~/.cache/hetmoe), then plans which experts go on the GPU,
runs a Zipf(1.1) token stream through every MoE layer on GPU + CPU (CPU only without a GPU),
checks layer 0 of the first batch against the float64 reference, and prints a summary.

  --tokens N   tokens in the stream (default 256)
  --batch B    tokens per batch (default 16: decode-like)
  --gpu off    do not use a GPU
  --json       print the summary as JSON`,
  async run(argv) {
    const { values } = parseFlags(argv, { tokens: { type: 'string' }, batch: { type: 'string' }, gpu: { type: 'string' }, json: { type: 'boolean' } })
    const nTokens = parseIntFlag(values.tokens, '--tokens', 256, 1)
    const batch = parseIntFlag(values.batch, '--batch', 16, 1)
    const dir = await cachedPresetModel('small', 'hetmoe demo')
    const model = await loadModel(dir)
    const tokens = zipfTokens(nTokens, model.manifest.vocabSize, 1.1, 42)
    const gpu = values.gpu === 'off' ? 'off' : 'auto'
    const { plan, summary: planSummary } = await planForModel(model, { tokens, gpu, batch })
    const rt = await createRuntime({ model, gpu, plan })
    rt.on('warning', (w: string) => console.error(`hetmoe: ${w}`))
    let check = { relativeError: NaN, rows: 0 }
    const bar = new Progress('demo', Math.ceil(nTokens / batch))
    const report = await runTokenStream(rt, {
      tokens,
      batch,
      domain: 0,
      warmup: 1,
      onBatch: () => bar.tick(),
      onFirst: (h, out, ids) => {
        const ref = layerForwardRef(model, 0, { x: h, tokenIds: ids, domain: 0 }).out
        check = { relativeError: relativeError(ref, out), rows: ids.length }
      },
    })
    bar.done()
    const stats = rt.stats()
    await rt.close()
    model.close()
    const ok = check.relativeError <= 1e-2
    if (values.json) {
      console.log(JSON.stringify({ model: dir, plan: planSummary, gpu: stats.gpu, report, check: { ...check, ok } }, null, 2))
    } else {
      console.log(`model    ${dir}`)
      console.log(`devices  ${stats.gpu.enabled ? `GPU ${stats.gpu.device} (${stats.gpu.residentExperts} resident experts, ${(stats.gpu.residentBytes / 2 ** 30).toFixed(2)} GiB) + ` : 'CPU only: '}${stats.cpuThreads} CPU threads`)
      console.log(`plan     ${planSummary}`)
      console.log(formatStreamReport(report))
      console.log(`check    layer 0, first batch (${check.rows} tokens) vs float64 reference: relative error ${check.relativeError.toExponential(2)} ${ok ? 'OK' : 'FAILED'}`)
    }
    return ok ? 0 : 1
  },
}
