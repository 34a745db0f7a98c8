// What one layer's routing costs at prefill sizes under the conditions a runtime routes in, to find why
// `place` (measureRouteS: random hidden states written once, an idle millisecond before each call)
// charged 0.085 ms at 256 tokens and 0.51 at 4096 where sigma-lite's runtime spent 0.27-0.36 and
// 0.88-0.97 on the H200 machine's Xeon (issue #6). For a device call; prints one table:
//   node dist/bench/route-probe.js MODEL_DIR [tokens=256,4096] [runs=40]
// Conditions, each timed on routeLayer (the whole route stage) and on the finiteness scan alone:
//   b2b          back to back
//   idle1        1 ms idle before each call (what place does)
//   idle3        3 ms idle before each call
//   dirty+idle1  this thread rewrites the hidden states (as the residual add between layers does), then 1 ms idle
//   dirty        rewritten right before the call
// Run it again with HETMOE_SCAN_PARALLEL_MIN=0 for the scan on the calling thread alone.
import { readModelFile } from '../scheduler/model-file.js'
import { Arena } from '../runtime/arena.js'
import { routeLayer } from '../runtime/route-layer.js'
import { randomHidden, uniformTokens } from '../runtime/token-stream.js'
import { native } from '../runtime/native.js'

const [dir, tokensArg = '256,4096', runsArg = '40'] = process.argv.slice(2)
if (!dir) throw new Error('usage: node dist/bench/route-probe.js MODEL_DIR [tokens=256,4096] [runs=40]')
const model = readModelFile(dir)
const m = model.manifest
const D = m.hiddenSize
const runs = Number(runsArg)
const sleeper = new Int32Array(new SharedArrayBuffer(4))
const idle = (ms: number) => Atomics.wait(sleeper, 0, 0, ms)
const median = (a: number[]) => a.sort((x, y) => x - y)[a.length >> 1]

console.log(`route probe: ${dir}, D=${D}, scan pool from ${native().scanPoolMinFloats()} floats, HETMOE_SCAN_PARALLEL_MIN=${process.env.HETMOE_SCAN_PARALLEL_MIN ?? '(default)'}`)
console.log('tokens  condition     route ms (median, p90)   scan ms (median, p90)')
for (const T of tokensArg.split(',').map(Number)) {
  const arena = new Arena({ bytes: T * D * 4 + (64 << 20) })
  const h = arena.lease(T * D * 4).f32(T * D)
  const block = randomHidden(Math.min(T, 64), D, 11)
  for (let r = 0; r < T; r += 64) h.set(block.subarray(0, Math.min(64, T - r) * D), r * D)
  const options = { tokenIds: uniformTokens(T, m.vocabSize, 11), domain: 0 }
  const rewrite = () => {
    for (let i = 0; i < h.length; i++) h[i] = h[i] * 1.0000001
  }
  const route = (layer: number) => {
    const leases: ReturnType<Arena['lease']>[] = []
    const t0 = performance.now()
    routeLayer(model, layer, h, T, options, (bytes) => {
      const l = arena.lease(bytes)
      leases.push(l)
      return l
    })
    const ms = performance.now() - t0
    for (const l of leases) l.release()
    return ms
  }
  const scan = () => {
    const t0 = performance.now()
    native().firstNonFinite(h, T * D)
    return performance.now() - t0
  }
  for (let i = 0; i < 200; i++) route(i % m.layers.length) // warm
  const conditions: [string, () => void][] = [
    ['b2b', () => {}],
    ['idle1', () => idle(1)],
    ['idle3', () => idle(3)],
    ['dirty+idle1', () => (rewrite(), idle(1))],
    ['dirty', rewrite],
  ]
  for (const [name, before] of conditions) {
    const r: number[] = []
    const s: number[] = []
    for (let i = 0; i < runs; i++) {
      before()
      r.push(route(i % m.layers.length))
      before()
      s.push(scan())
    }
    const p90 = (a: number[]) => a.sort((x, y) => x - y)[Math.floor(a.length * 0.9)]
    console.log(`${String(T).padStart(6)}  ${name.padEnd(12)}  ${median(r).toFixed(3).padStart(8)} ${p90(r).toFixed(3).padStart(8)}        ${median(s).toFixed(3).padStart(8)} ${p90(s).toFixed(3).padStart(8)}`)
  }
  arena.close()
}
