import { importCheckpoint } from '../../../experts/import.js'
import type { WeightDtype, WeightFormat } from '../../../experts/manifest.js'
import { parseFlags } from '../args.js'
import { UsageError, type Command } from '../command.js'
import { Progress } from '../progress.js'

export const command: Command = {
  summary: 'import the expert layers of a Hugging Face MoE checkpoint (safetensors) into a model store',
  usage: `Usage: hetmoe import <checkpoint-dir> --out DIR [--format dense|2:4|75%] [--dtype bf16|fp32] [--force] [--json]

Reads config.json and the safetensors file(s) (one file, or shards with model.safetensors.index.json)
of a Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE or DeepSeek-MoE checkpoint, and writes the routed experts,
the router gates and the shared experts into a model store. Other tensors (attention, embeddings,
norms) are skipped. F32, F16 and BF16 sources.

  --out      the model directory to create (must not exist unless --force)
  --format   dense (default), or 2:4 / 75%: magnitude-pruned (the error per matrix is recorded), or
             compressed without loss where the checkpoint already follows the pattern
  --dtype    bf16 (default) or fp32
  --force    replace an existing model at --out
  --json     print a JSON summary on stdout

On any error (a malformed file, a missing shard or tensor, config.json disagreeing with the tensors)
nothing is left at --out.`,
  async run(argv) {
    const { values, positionals } = parseFlags(
      argv,
      { out: { type: 'string', short: 'o' }, format: { type: 'string' }, dtype: { type: 'string' }, force: { type: 'boolean' }, json: { type: 'boolean' } },
      true,
    )
    if (positionals.length !== 1) throw new UsageError('give exactly one checkpoint directory')
    if (!values.out) throw new UsageError('--out DIR is required')
    const format = (values.format ?? 'dense') as WeightFormat
    if (!['dense', '2:4', '75%'].includes(format)) throw new UsageError(`--format must be dense, 2:4 or 75% (got "${format}")`)
    const dtype = (values.dtype ?? 'bf16') as WeightDtype
    if (!['bf16', 'fp32'].includes(dtype)) throw new UsageError(`--dtype must be bf16 or fp32 (got "${dtype}")`)
    let progress: Progress | undefined
    const t0 = performance.now()
    const manifest = await importCheckpoint(positionals[0], {
      out: values.out,
      format,
      dtype,
      overwrite: values.force ?? false,
      onProgress(done, total, tensor) {
        progress ??= new Progress('import', total)
        progress.tick(1, tensor)
      },
    })
    const seconds = (performance.now() - t0) / 1000
    progress?.done(`${(manifest.weightsBytes / 1e9).toFixed(2)} GB in ${seconds.toFixed(1)} s`)
    const errors = manifest.layers.flatMap((l) => l.experts.flatMap((e) => [e.gate, e.up, e.down].map((m) => m?.pruneError ?? 0)))
    const summary = {
      out: values.out,
      name: manifest.name,
      layers: manifest.layers.length,
      expertsPerLayer: manifest.layers[0].experts.length,
      weightsBytes: manifest.weightsBytes,
      seconds,
      maxPruneError: Math.max(...errors),
      meanPruneError: errors.reduce((a, b) => a + b, 0) / errors.length,
    }
    if (values.json) console.log(JSON.stringify(summary, null, 2))
    else
      console.log(
        `${manifest.name}: ${summary.layers} MoE layers × ${summary.expertsPerLayer} experts, ${(summary.weightsBytes / 1e9).toFixed(2)} GB → ${values.out}` +
          (format === 'dense' ? '' : ` (prune error mean ${summary.meanPruneError.toFixed(3)}, max ${summary.maxPruneError.toFixed(3)})`),
      )
    return 0
  },
}
