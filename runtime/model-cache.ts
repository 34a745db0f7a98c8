// Synthetic models made once and cached: the demo's and the benches' built-in default models.
import { existsSync } from 'node:fs'
import { homedir } from 'node:os'
import { join } from 'node:path'
import { envConfig } from './config.js'
import { Progress } from './cli/progress.js'
import { synthModel, type PresetName } from '../experts/synth.js'
import { MANIFEST_FILE, type WeightFormat } from '../experts/manifest.js'

export function cacheDir(): string {
  return envConfig().cacheDir ?? join(homedir(), '.cache', 'hetmoe')
}

/** The directory of preset `preset` (seed 0, bf16, dense unless said), synthesised on first use with a progress bar. */
export async function cachedPresetModel(preset: PresetName, who = 'hetmoe', format: WeightFormat = 'dense'): Promise<string> {
  const dir = join(cacheDir(), 'models', `${preset}-seed0-${format.replace(':', '_').replace('%', 'pct')}-bf16`)
  if (existsSync(join(dir, MANIFEST_FILE))) return dir
  process.stderr.write(`${who}: synthesising the '${preset}' model into ${dir} (once)\n`)
  let bar: Progress | undefined
  let shown = 0
  await synthModel({
    preset,
    out: dir,
    format,
    overwrite: true,
    onProgress: (done, total) => {
      bar ??= new Progress(`synth ${preset}`, total)
      bar.tick(done - shown, `${(done / 2 ** 30).toFixed(2)}/${(total / 2 ** 30).toFixed(2)} GiB`)
      shown = done
    },
  })
  bar?.done()
  return dir
}
