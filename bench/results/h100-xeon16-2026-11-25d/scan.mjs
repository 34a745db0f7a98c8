import { native } from '../dist/runtime/native.js'
const out = []
for (const rows of [16, 256, 1024, 4096]) {
  const n = rows * 2048, x = new Float32Array(n).map((_, i) => (i % 977) * 1e-3)
  const ts = []; for (let i = 0; i < 60; i++) { const t0 = performance.now(); native().firstNonFinite(x, n); ts.push(performance.now() - t0) }
  ts.sort((a, b) => a - b); out.push(`${rows} rows ${ts[30].toFixed(3)} ms (min ${ts[0].toFixed(3)})`)
}
console.log(`scan, HETMOE_SCAN_PARALLEL_MIN=${process.env.HETMOE_SCAN_PARALLEL_MIN ?? 'default'}: ${out.join(', ')}`)
