import { extractDomain } from '../../../experts/extract.js'
import { parseFlags } from '../args.js'
import { UsageError, type Command } from '../command.js'
import { Progress } from '../progress.js'

export const command: Command = {
  summary: "extract one domain's experts of an RRE model into a smaller model",
  usage: `Usage: hetmoe extract --model DIR --domain NAME|INDEX --out DIR [--force]

Keeps, in every RRE layer, the expert group of one domain (renumbered from 0, as the model's only
domain) and its routing-table row; gate-routed layers are kept whole. Weights are copied byte for
byte, so the sub-model's expert outputs for that domain are bit-identical to the full model's.

  --model    the source model directory
  --domain   the domain's name or index
  --out      the model directory to create (must not exist unless --force)
  --force    replace an existing model at --out`,
  async run(argv) {
    const { values } = parseFlags(argv, { model: { type: 'string', short: 'm' }, domain: { type: 'string', short: 'd' }, out: { type: 'string', short: 'o' }, force: { type: 'boolean' } })
    if (!values.model) throw new UsageError('--model DIR is required')
    if (values.domain === undefined) throw new UsageError('--domain NAME|INDEX is required')
    if (!values.out) throw new UsageError('--out DIR is required')
    let progress: Progress | undefined
    const m = await extractDomain(values.model, {
      domain: values.domain,
      out: values.out,
      overwrite: values.force ?? false,
      onProgress(done, total) {
        progress ??= new Progress('extract', total)
        progress.tick(1)
      },
    })
    progress?.done()
    console.log(`${m.name}: ${m.layers.length} layers × ${m.layers[0].experts.length} experts, ${(m.weightsBytes / 1e9).toFixed(3)} GB → ${values.out}`)
    return 0
  },
}
