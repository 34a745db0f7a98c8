// Test helper: small synthetic models in temporary directories.
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { WeightDtype, WeightFormat } from '../../experts/manifest.js'
import { synthModel, type SynthPreset } from '../../experts/synth.js'

/** A temp directory removed at teardown (in `base`, defaults to fastTmp()). */
export function tempDir(t: { teardown(fn: () => void): void }, prefix = 'hetmoe-test-', base = fastTmp()): string {
  const dir = mkdtempSync(join(base, prefix))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

/** Smaller than `tiny` (small vocabulary), for tests that make many models. */
export const MICRO: SynthPreset = {
  name: 'micro',
  layers: 2,
  hidden: 32,
  inner: 48,
  ffn: 'swiglu',
  routing: { kind: 'rre', domains: 2, expertsPerDomain: 3 },
  vocabSize: 50,
}

export const MICRO_GATED: SynthPreset = { ...MICRO, name: 'micro-gated', routing: { kind: 'gate', experts: 5, topK: 2, normalize: true } }
export const MICRO_GELU: SynthPreset = { ...MICRO, name: 'micro-gelu', ffn: 'gelu' }

export async function makeModel(dir: string, preset: SynthPreset | 'tiny', opts: { seed?: number; format?: WeightFormat; dtype?: WeightDtype; name?: string } = {}): Promise<string> {
  const out = join(dir, opts.name ?? `${typeof preset === 'string' ? preset : preset.name}-${opts.format ?? 'dense'}-${opts.dtype ?? 'bf16'}-${opts.seed ?? 0}`.replace(/[:%]/g, '_'))
  await synthModel({ preset, out, seed: opts.seed, format: opts.format, dtype: opts.dtype })
  return out
}

/** Names in `dir` left over by an interrupted writer. */
export function partials(dir: string): string[] {
  return readdirSync(dir).filter((f) => f.includes('.partial-'))
}

/** HETMOE_TEST_TMP, else memory-backed /dev/shm where there is one (the tests write thousands of small files and fsync them), else the OS temp directory. */
export function fastTmp(): string {
  return process.env.HETMOE_TEST_TMP ?? (existsSync('/dev/shm') ? '/dev/shm' : tmpdir())
}
