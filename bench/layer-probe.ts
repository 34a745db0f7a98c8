// Where a GPU layer call's time goes at decode and prefill sizes, and whether it depends on what the
// application did to the hidden rows just before (issue #6: calibration probes run back to back, a
// model loop rewrites its hidden state between layers). One sigma-lite-sized RRE layer (16 experts,
// D 2048, F 8192, GeLU, bf16), every expert resident on the GPU, uniform random token ids; for each batch
// size and each variant, the median over the forwards of every stage the runtime records:
//   steady    the same hidden rows every forward (what the calibration's probes do)
//   residual  hidden += out after every forward (what a model loop does, and `hetmoe run`)
//   fresh     new hidden rows copied in before every forward
//   flushed   residual, then a pass over 256 MiB of scratch that pushes the rows out of the caches (as a
//             CPU job's weight reads beside the GPU call would: call 13 copied a 4096-token layer's rows in
//             in 3.5-4.0 ms with no CPU job beside, 0.96 with one; is it the cached, dirty rows?)
// For a device call; prints one table, and JSON with --json FILE:
//   node dist/bench/layer-probe.js [tokens=1,16,256,4096] [forwards=20] [--json FILE]
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createRuntime } from '../runtime/runtime.js'
import { loadModel } from '../experts/model.js'
import { synthModel } from '../experts/synth.js'
import { randomHidden } from '../runtime/token-stream.js'

const args = process.argv.slice(2)
const jsonAt = args.indexOf('--json')
const jsonFile = jsonAt >= 0 ? args.splice(jsonAt, 2)[1] : undefined
const [tokensArg = '1,16,256,4096', forwardsArg = '20'] = args
const sizes = tokensArg.split(',').map(Number)
const forwards = Number(forwardsArg)
const VARIANTS = ['steady', 'residual', 'fresh', 'flushed'] as const
/** The flushed variant's scratch: larger than any of these machines' last-level caches. */
const scratch = new Float32Array(64 * 2 ** 20)
const STAGES = ['total', 'route', 'gpu', 'gpuHost', 'gpuStream', 'gpuCopyIn', 'gpuKernel'] as const
const median = (a: number[]) => [...a].sort((x, y) => x - y)[a.length >> 1]

const dir = mkdtempSync(join(tmpdir(), 'hetmoe-layer-probe-'))
try {
  const E = 16
  await synthModel({ preset: { name: 'layer-probe', layers: 1, hidden: 2048, inner: 8192, ffn: 'gelu', routing: { kind: 'rre', domains: 1, expertsPerDomain: E }, vocabSize: 32000 }, out: dir, overwrite: true })
  const model = await loadModel(dir)
  const D = model.manifest.hiddenSize
  const Tmax = Math.max(...sizes)
  const all = Array.from({ length: E }, (_, e) => e)
  const rt = await createRuntime({ model, gpu: 'auto', replace: false, plan: { layers: [{ layer: 0, gpuExperts: all }] }, arenaBytes: 4 * Tmax * D * 4 + (64 << 20) })
  // Without a GPU the experts run on the CPU and the GPU columns stay 0 (a smoke run of the script).
  if (!rt.stats().gpu.enabled) console.log('layer probe: no GPU here; every expert runs on the CPU')
  const h = rt.arena.lease(Tmax * D * 4)
  const o = rt.arena.lease(Tmax * D * 4)
  const source = randomHidden(Tmax, D, 11)
  const ids = new Int32Array(Tmax)
  let seed = 1
  const results: { tokens: number; variant: string; ms: Record<string, number> }[] = []
  console.log(`layer probe: ${rt.stats().gpu.device ?? 'CPU only'}; ms, median of ${forwards} forwards after 3 untimed`)
  console.log(`tokens  variant   ${STAGES.map((s) => s.padStart(9)).join(' ')}  copy-out  in GB/s  out GB/s`)
  for (const T of sizes) {
    for (const variant of VARIANTS) {
      const hv = h.f32(T * D)
      const ov = o.f32(T * D)
      hv.set(source.subarray(0, T * D))
      const per: Record<string, number[]> = Object.fromEntries([...STAGES, 'copyOut'].map((s) => [s, []]))
      for (let f = 0; f < forwards + 3; f++) {
        for (let i = 0; i < T; i++) ids[i] = Math.floor(((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32) * 32000)
        if (variant === 'residual' || variant === 'flushed') for (let i = 0; i < hv.length; i++) hv[i] = 0.5 * (hv[i] + ov[i])
        if (variant === 'flushed') for (let i = 0; i < scratch.length; i += 16) scratch[i] += 1
        else if (variant === 'fresh') hv.set(source.subarray(((f * 7919) % Math.max(1, Tmax - T + 1)) * D, ((f * 7919) % Math.max(1, Tmax - T + 1)) * D + T * D))
        const before = rt.stats().layers[0]
        await rt.forward(0, hv, { tokenIds: ids.subarray(0, T), domain: 0, out: ov })
        const after = rt.stats().layers[0]
        if (f < 3) continue
        for (const s of STAGES) per[s].push(after.ms[s] - before.ms[s])
        per.copyOut.push(after.ms.gpuStream - before.ms.gpuStream - (after.ms.gpuCopyIn - before.ms.gpuCopyIn) - (after.ms.gpuKernel - before.ms.gpuKernel))
      }
      const ms = Object.fromEntries(Object.entries(per).map(([k, v]) => [k, median(v)]))
      if (!ov.every(Number.isFinite)) throw new Error(`${T} tokens, ${variant}: the output holds a non-finite value`)
      results.push({ tokens: T, variant, ms })
      const gbps = (x: number) => (x > 0 ? ((T * D * 4) / (x * 1e6)).toFixed(1) : '—')
      console.log(`${String(T).padStart(6)}  ${variant.padEnd(8)}  ${STAGES.map((s) => ms[s].toFixed(3).padStart(9)).join(' ')}  ${ms.copyOut.toFixed(3).padStart(8)}  ${gbps(ms.gpuCopyIn).padStart(7)}  ${gbps(ms.copyOut).padStart(8)}`)
    }
  }
  if (jsonFile) writeFileSync(jsonFile, JSON.stringify({ device: rt.stats().gpu.device, forwards, results }, null, 1))
  h.release()
  o.release()
  await rt.close()
  model.close()
} finally {
  rmSync(dir, { recursive: true, force: true })
}
