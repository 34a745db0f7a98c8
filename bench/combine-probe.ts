// The top-k combine and the row copies on the crew (CpuCrew.combine) against the calling thread alone,
// at decode and prefill sizes, on a real runtime's crew (its workers spinning or asleep as forwards
// leave them). Each size is timed back to back (workers spinning) and after a 1 ms idle (workers may
// sleep; below 4M floats the post does not wake them). Checks the crew's sums bit for bit against the
// single thread first. For a device call; prints one table:
//   node dist/bench/combine-probe.js [sizes=16x2x4096,256x2x4096,4096x2x4096,4096x1x2048] [runs=30]
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createRuntime } from '../runtime/runtime.js'
import { loadModel } from '../experts/model.js'
import { synthModel, PRESETS } from '../experts/synth.js'
import { crewOf } from '../runtime/cpu-crew.js'
import { native } from '../runtime/native.js'

const [sizesArg = '16x2x4096,256x2x4096,4096x2x4096,4096x1x2048', runsArg = '30'] = process.argv.slice(2)
const sizes = sizesArg.split(',').map((s) => s.split('x').map(Number) as [number, number, number])
const runs = Number(runsArg)
const sleeper = new Int32Array(new SharedArrayBuffer(4))
const median = (a: number[]) => [...a].sort((x, y) => x - y)[a.length >> 1]

const dir = mkdtempSync(join(tmpdir(), 'hetmoe-combine-probe-'))
try {
  await synthModel({ preset: PRESETS.tiny, out: dir, overwrite: true })
  const model = await loadModel(dir)
  const largest = Math.max(...sizes.map(([T, K, D]) => T * K * D * 4))
  const rt = await createRuntime({ model, gpu: 'off', arenaBytes: Math.max(256 << 20, largest + (64 << 20)) })
  const crew = crewOf(rt.arena)!
  const a = native()
  // Workers go into crewServe from the event loop (and leave it after a second without a forward):
  // send them in and let them arrive before each size's timed runs.
  const serve = async () => {
    crew.alert()
    crew.combine(new Float32Array(2 * 64), undefined, 0, new Float32Array(2 * 64), 2, 1, 64, undefined, 0)
    for (let i = 0; i < 500 && crew.stats().started < crew.threads; i++) await new Promise((r) => setTimeout(r, 10))
    await new Promise((r) => setTimeout(r, 50))
  }
  console.log(`combine probe: ${crew.threads} workers; ms, median of ${runs} (single thread | crew | ratio)`)
  console.log('T×K×D            back to back                 after 1 ms idle')
  for (const [T, K, D] of sizes) {
    const lease = rt.arena.lease(T * K * D * 4)
    const rows = lease.f32(T * K * D)
    for (let i = 0; i < rows.length; i++) rows[i] = Math.sin(i * 0.37)
    const single = new Float32Array(T * D)
    const crewOut = new Float32Array(T * D).fill(NaN)
    a.combineRows(rows, null, 0, single, T, K, D, null)
    if (!crew.combine(rows, undefined, 0, crewOut, T, K, D, undefined, 0)) throw new Error('the crew declined the check run')
    if (!crewOut.every((x, i) => Object.is(x, single[i]))) throw new Error(`${T}x${K}x${D}: the crew's sums differ from the single thread's`)
    await serve()
    const cells: string[] = []
    for (const idleMs of [0, 1]) {
      const one: number[] = []
      const shared: number[] = []
      for (let r = 0; r < runs; r++) {
        if (idleMs) Atomics.wait(sleeper, 0, 0, idleMs)
        let t0 = performance.now()
        a.combineRows(rows, null, 0, single, T, K, D, null)
        one.push(performance.now() - t0)
        if (idleMs) Atomics.wait(sleeper, 0, 0, idleMs)
        t0 = performance.now()
        crew.combine(rows, undefined, 0, crewOut, T, K, D, undefined, 0)
        shared.push(performance.now() - t0)
      }
      cells.push(`${median(one).toFixed(4)} | ${median(shared).toFixed(4)} | ${(median(one) / median(shared)).toFixed(2)}x`)
    }
    console.log(`${`${T}x${K}x${D}`.padEnd(16)} ${cells[0].padEnd(28)} ${cells[1]}`)
    lease.release()
  }
  await rt.close()
  model.close()
} finally {
  rmSync(dir, { recursive: true, force: true })
}
