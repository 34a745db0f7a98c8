import { statSync } from 'node:fs'
import type { WeightDtype, WeightFormat } from '../../../experts/manifest.js'
import { PRESETS, synthModel, type PresetName } from '../../../experts/synth.js'
import { parseFlags, parseIntFlag } from '../args.js'
import { UsageError, type Command } from '../command.js'
import { Progress } from '../progress.js'

export const command: Command = {
  summary: 'generate a deterministic synthetic MoE model (tiny, small, sigma-lite, mixtral, fine)',
  usage: `Usage: hetmoe synth --preset NAME --out DIR [--seed N] [--format dense|2:4|75%] [--dtype bf16|fp32] [--force] [--json]

Writes a model store (manifest.msgpack + weights.bin) with realistic weight statistics. The same
preset, seed, format and dtype give the same weights on every machine.

  --preset   tiny        2 layers × (2 domains × 4 experts), 64 × 128, SwiGLU, RRE
             small       4 × (4 × 8), 1024 × 2816, SwiGLU, RRE
             sigma-lite  4 × (4 × 16), 2048 × 8192, GeLU, RRE (~17 GB dense bf16)
             mixtral     1 × 8, 4096 × 14336, SwiGLU, top-2 gate
             fine        1 × 64, 2048 × 1408, SwiGLU, top-6 gate
  --out      the model directory to create (must not exist unless --force)
  --seed     defaults to 0
  --format   dense (default), 2:4 or 75% (magnitude-pruned from the dense weights)
  --dtype    bf16 (default) or fp32
  --force    replace an existing model at --out
  --json     print a JSON summary on stdout`,
  async run(argv) {
    const { values } = parseFlags(argv, {
      preset: { type: 'string' },
      out: { type: 'string', short: 'o' },
      seed: { type: 'string' },
      format: { type: 'string' },
      dtype: { type: 'string' },
      force: { type: 'boolean' },
      json: { type: 'boolean' },
    })
    if (!values.preset || !(values.preset in PRESETS)) throw new UsageError(`--preset must be one of ${Object.keys(PRESETS).join(', ')}`)
    if (!values.out) throw new UsageError('--out DIR is required')
    const format = (values.format ?? 'dense') as WeightFormat
    if (!['dense', '2:4', '75%'].includes(format)) throw new UsageError(`--format must be dense, 2:4 or 75% (got "${format}")`)
    const dtype = (values.dtype ?? 'bf16') as WeightDtype
    if (!['bf16', 'fp32'].includes(dtype)) throw new UsageError(`--dtype must be bf16 or fp32 (got "${dtype}")`)
    const seed = parseIntFlag(values.seed, '--seed', 0)
    let progress: Progress | undefined
    const t0 = performance.now()
    const manifest = await synthModel({
      preset: values.preset as PresetName,
      out: values.out,
      seed,
      format,
      dtype,
      overwrite: values.force ?? false,
      onProgress(done, total, bytes) {
        progress ??= new Progress(`synth ${values.preset}`, total)
        const mbps = bytes / 1e6 / ((performance.now() - t0) / 1000)
        progress.tick(1, `${(bytes / 1e9).toFixed(2)} GB, ${mbps.toFixed(0)} MB/s`)
      },
    })
    const seconds = (performance.now() - t0) / 1000
    const bytes = manifest.weightsBytes
    progress?.done(`${(bytes / 1e9).toFixed(2)} GB in ${seconds.toFixed(1)} s (${(bytes / 1e6 / seconds).toFixed(0)} MB/s)`)
    const summary = { out: values.out, name: manifest.name, weightsBytes: bytes, seconds, mbPerSecond: bytes / 1e6 / seconds, manifestBytes: statSync(`${values.out}/manifest.msgpack`).size }
    if (values.json) console.log(JSON.stringify(summary, null, 2))
    else console.log(`${manifest.name}: ${manifest.layers.length} layers, ${(bytes / 1e9).toFixed(2)} GB → ${values.out}`)
    return 0
  },
}
