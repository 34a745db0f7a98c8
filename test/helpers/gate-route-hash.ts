// Run as a child process by test/route-gate.test.ts: routes a seeded batch through a seeded gate and
// prints the hash of the selection, so the test can compare two processes' routes bit for bit.
import { GateRouter } from '../../scheduler/route-gate.js'
import { allocSelection } from '../../scheduler/selection.js'
import { hashView } from './hash.js'

export function gateRouteHash(E: number, D: number, K: number, T: number): string {
  let x = 7
  const next = () => (x = (Math.imul(x, 1664525) + 1013904223) >>> 0) / 2 ** 32 - 0.5
  const router = new GateRouter({ weight: Float32Array.from({ length: E * D }, next), numExperts: E, hiddenSize: D, topK: K, normalize: true })
  const sel = allocSelection(E, T * K)
  router.route(Float32Array.from({ length: T * D }, next), T, sel)
  return [sel.counts, sel.offsets, sel.tokenRows, sel.outRows, sel.scales].map(hashView).join(' ')
}

if (process.argv[1]?.endsWith('gate-route-hash.js')) {
  const [E, D, K, T] = process.argv.slice(2).map(Number)
  console.log(gateRouteHash(E, D, K, T))
}
