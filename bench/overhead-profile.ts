// Where a decode layer's time goes on the calling thread, by function (V8's sampling profiler, in
// process): forwards of one tiny model at one token count, the top functions by self time. The
// addon's functions all show under one of their names (on the 2-core VM "combineRows :0": that row is
// every native call, the join's kernels included). For bench/overhead-xeon.sh; prints a table:
//   node dist/bench/overhead-profile.js [model=tiny-gate] [tokens=16] [forwards=20000] [gapUs=0]
import { Session } from 'node:inspector/promises'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createRuntime } from '../runtime/runtime.js'
import { loadModel } from '../experts/model.js'
import { synthModel, type SynthPreset } from '../experts/synth.js'
import { randomHidden, uniformTokens } from '../runtime/token-stream.js'

interface ProfileNode {
  id: number
  callFrame: { functionName: string; url: string; lineNumber: number }
  children?: number[]
}

const PRESETS: Record<string, SynthPreset> = {
  'tiny-rre': { name: 'tiny-rre', layers: 1, hidden: 64, inner: 128, ffn: 'swiglu', routing: { kind: 'rre', domains: 2, expertsPerDomain: 4 }, vocabSize: 32000 },
  'tiny-gate': { name: 'tiny-gate', layers: 1, hidden: 64, inner: 128, ffn: 'swiglu', routing: { kind: 'gate', experts: 8, topK: 2, normalize: true }, vocabSize: 32000 },
}

export async function profileForwards(model: string, T: number, forwards: number, gapUs: number): Promise<string> {
  const preset = PRESETS[model]
  if (!preset) throw new Error(`model must be one of ${Object.keys(PRESETS).join(', ')}`)
  const dir = mkdtempSync(join(tmpdir(), 'hetmoe-profile-'))
  const session = new Session()
  try {
    await synthModel({ preset, out: join(dir, 'm') })
    const m = await loadModel(join(dir, 'm'))
    const rt = await createRuntime({ model: m, gpu: 'off' })
    const x = randomHidden(T, preset.hidden, T)
    const ids = uniformTokens(T, preset.vocabSize, T)
    const o = new Float32Array(T * preset.hidden)
    const busy = (us: number) => {
      const end = performance.now() + us / 1000
      while (performance.now() < end);
    }
    for (let i = 0; i < 3000; i++) await rt.forward(0, x, { tokenIds: ids, domain: 0, out: o })
    session.connect()
    await session.post('Profiler.enable')
    await session.post('Profiler.setSamplingInterval', { interval: 20 })
    await session.post('Profiler.start')
    const t0 = performance.now()
    let inForward = 0
    for (let i = 0; i < forwards; i++) {
      if (gapUs) busy(gapUs)
      const s = performance.now()
      await rt.forward(0, x, { tokenIds: ids, domain: 0, out: o })
      inForward += performance.now() - s
    }
    const wall = performance.now() - t0
    const { profile } = (await session.post('Profiler.stop')) as { profile: { nodes: ProfileNode[]; samples: number[]; timeDeltas: number[] } }
    await rt.close()
    m.close()
    // Self time per function (samples × their time deltas), then the share of the forwards' time.
    const byId = new Map(profile.nodes.map((n) => [n.id, n]))
    const self = new Map<string, number>()
    let total = 0
    profile.samples.forEach((id, i) => {
      const n = byId.get(id)!
      const dt = profile.timeDeltas[i] ?? 0
      const f = n.callFrame
      const key = `${f.functionName || '(anonymous)'} ${f.url.split('/').slice(-2).join('/')}:${f.lineNumber + 1}`
      self.set(key, (self.get(key) ?? 0) + dt)
      total += dt
    })
    const rows = [...self].sort((a, b) => b[1] - a[1]).slice(0, 14)
    const perForwardUs = (us: number) => us / forwards
    const lines = [
      `profile: ${model} T=${T}, ${forwards} forwards${gapUs ? `, ${gapUs} µs gaps` : ''}: ${((inForward * 1000) / forwards).toFixed(1)} µs a forward (profiled), wall ${wall.toFixed(0)} ms; self time, µs a forward (rows ":0" are native; the addon's calls all under one name):`,
      ...rows.map(([k, us]) => `  ${perForwardUs(us).toFixed(2).padStart(7)}  ${((100 * us) / total).toFixed(1).padStart(5)}%  ${k}`),
    ]
    return lines.join('\n')
  } finally {
    session.disconnect()
    rmSync(dir, { recursive: true, force: true })
  }
}

if (process.argv[1]?.endsWith('overhead-profile.js')) {
  const [model = 'tiny-gate', tokens = '16', forwards = '20000', gapUs = '0'] = process.argv.slice(2)
  console.log(await profileForwards(model, Number(tokens), Number(forwards), Number(gapUs)))
}
