// `hetmoe bench agreement`: CPU-only, GPU-only and hybrid execution against the float64 reference,
// on every preset and format and on an imported Mixtral-style checkpoint. A correctness sweep for
// machines with a GPU (without one, only CPU-only runs); it times nothing.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createRuntime, type PlacementPlan } from '../runtime/runtime.js'
import { loadModel, type Model } from '../experts/model.js'
import { importCheckpoint } from '../experts/import.js'
import { layerForwardRef, type DenseExpert } from '../experts/reference.js'
import { relativeError } from '../experts/formats.js'
import type { WeightFormat } from '../experts/manifest.js'
import type { PresetName } from '../experts/synth.js'
import { cachedPresetModel } from '../runtime/model-cache.js'
import { GpuBackend } from '../runtime/gpu-backend.js'
import { randomHidden, uniformTokens } from '../runtime/token-stream.js'
import { parseFlags } from '../runtime/cli/args.js'
import type { Command } from '../runtime/cli/command.js'
import { benchMachine } from './support/machine.js'
import { writeCheckpoint } from '../test/helpers/safetensors-writer.js'

type Mode = 'cpu-only' | 'gpu-only' | 'hybrid'
interface Row { model: string; format: string; mode: Mode; layer: number; tokens: number; relErr: number | null; ok: boolean; note?: string }

const TOLERANCE = 1e-2 // bf16 weights (and the kernels' bf16 activations)

function plans(model: Model): Record<'gpu-only' | 'hybrid', PlacementPlan> {
  const layers = model.manifest.layers
  return {
    'gpu-only': { layers: layers.map((l, layer) => ({ layer, gpuExperts: l.experts.map((_, e) => e) })) },
    hybrid: { layers: layers.map((l, layer) => ({ layer, gpuExperts: l.experts.map((_, e) => e).filter((e) => e % 2 === 0) })) },
  }
}

async function check(name: string, format: string, model: Model, modes: Mode[], tokens: number[], rows: Row[]): Promise<void> {
  const m = model.manifest
  const cache = new Map<string, DenseExpert>()
  const layersToCheck = [...new Set([0, m.layers.length - 1])]
  const refs = new Map<string, ReturnType<typeof layerForwardRef>>()
  for (const mode of modes) {
    const rt = await createRuntime({ model, gpu: mode === 'cpu-only' ? 'off' : 0, ...(mode === 'cpu-only' ? {} : { plan: plans(model)[mode], gpuMemory: 2 * model.bytes }) })
    const warnings: string[] = []
    rt.on('warning', (w: string) => warnings.push(w))
    try {
      for (const layer of layersToCheck)
        for (const T of tokens) {
          const x = randomHidden(T, m.hiddenSize, 31 * T + layer)
          const ids = uniformTokens(T, m.vocabSize, 17 * T + layer)
          const before = rt.stats().layers[layer].gpuRows
          const out = await rt.forward(layer, x, { tokenIds: ids, domain: 0 })
          const key = `${layer}/${T}`
          if (!refs.has(key)) refs.set(key, layerForwardRef(model, layer, { x, tokenIds: ids, domain: 0 }, cache))
          const ref = refs.get(key)!
          const err = relativeError(ref.out, out)
          const gpuRows = rt.stats().layers[layer].gpuRows - before
          // Hybrid keeps the even experts resident: the GPU must have worked whenever one of them was routed to.
          const gpuExpected = mode === 'gpu-only' || (mode === 'hybrid' && Array.from(ref.routes.experts).some((e) => e % 2 === 0))
          const note = warnings.length ? warnings.join('; ') : gpuExpected && gpuRows === 0 ? 'no rows ran on the GPU' : undefined
          rows.push({ model: name, format, mode, layer, tokens: T, relErr: err, ok: err <= TOLERANCE && !note, ...(note ? { note } : {}) })
          process.stderr.write(`agreement: ${name} ${format} ${mode} layer ${layer} T=${T}: ${err.toExponential(2)}\n`)
        }
    } finally {
      await rt.close()
    }
  }
}

export const bench: Command = {
  summary: 'correctness sweep: CPU-only, GPU-only and hybrid vs the float64 reference, every preset and format',
  usage: `Usage: hetmoe bench agreement [--presets tiny,small,sigma-lite,mixtral,fine] [--formats dense,2:4,75%]
                             [--tokens 1,8] [--json FILE]

For each preset and format (synthesised once into the cache) and for an imported Mixtral-style
checkpoint, runs the first and last MoE layer CPU-only, GPU-only (every expert resident) and hybrid
(every other expert resident) and compares with the float64 reference (tolerance ${TOLERANCE}).
Exits 1 if any case disagrees or a GPU mode silently ran nothing on the GPU.`,
  async run(argv) {
    const { values } = parseFlags(argv, { presets: { type: 'string' }, formats: { type: 'string' }, tokens: { type: 'string' }, json: { type: 'string' } })
    const presets = (values.presets ?? 'tiny,small').split(',') as PresetName[]
    const formats = (values.formats ?? 'dense,2:4,75%').split(',') as WeightFormat[]
    const tokens = (values.tokens ?? '1,8').split(',').map(Number)
    const modes: Mode[] = GpuBackend.available().available ? ['cpu-only', 'gpu-only', 'hybrid'] : ['cpu-only']
    const rows: Row[] = []
    for (const preset of presets)
      for (const format of formats) {
        const model = await loadModel(await cachedPresetModel(preset, 'hetmoe bench agreement', format))
        try {
          await check(preset, format, model, modes, tokens, rows)
        } finally {
          model.close()
        }
      }
    const dir = mkdtempSync(join(tmpdir(), 'hetmoe-agree-'))
    try {
      writeCheckpoint(join(dir, 'ckpt'), { arch: 'mixtral', hidden: 256, inner: 512, experts: 8, topK: 2, layers: 2, dtype: 'BF16', shards: 2, seed: 5 })
      for (const format of formats) {
        const out = join(dir, `imported-${formats.indexOf(format)}`)
        await importCheckpoint(join(dir, 'ckpt'), { out, format, dtype: 'bf16' })
        const model = await loadModel(out)
        try {
          await check('imported mixtral-style', format, model, modes, tokens, rows)
        } finally {
          model.close()
        }
      }
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
    const bad = rows.filter((r) => !r.ok)
    console.log('model                    format  mode      layer  tokens  rel. error  ok')
    for (const r of rows)
      console.log(`${r.model.padEnd(24)} ${r.format.padEnd(7)} ${r.mode.padEnd(9)} ${String(r.layer).padStart(5)} ${String(r.tokens).padStart(7)}  ${(r.relErr ?? NaN).toExponential(2).padStart(10)}  ${r.ok ? 'yes' : `NO ${r.note ?? ''}`}`)
    console.log(`${rows.length - bad.length} passed, ${bad.length} failed`)
    if (values.json) writeFileSync(values.json, JSON.stringify({ machine: benchMachine(), tolerance: TOLERANCE, modes, rows }, null, 2) + '\n')
    return bad.length ? 1 : 0
  },
}
