import t from 'tap'
import { Worker } from 'node:worker_threads'
import { writeFileSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { native, packageRoot } from '../runtime/native.js'

t.test('the addon loads in the main thread and reports the CPU', async (t) => {
  const info = native().info()
  t.type(info.cpu.model, 'string')
  t.ok(info.cpu.logicalCores >= 1)
  t.type(info.cpu.isa.avx2, 'boolean')
  t.type(info.gpu.compiled, 'boolean')
  if (info.gpu.devices.length === 0) t.type(info.gpu.error, 'string', 'no GPU: the reason is reported')
})

t.test('the addon loads in worker threads, again and again', async (t) => {
  const addonPath = join(packageRoot, 'build', 'Release', 'hetmoe.node')
  const code = `
    const { parentPort } = require('node:worker_threads')
    const a = require(${JSON.stringify(addonPath)})
    const sab = new SharedArrayBuffer(8192)
    parentPort.postMessage({ model: a.info().cpu.model, mod: a.addressMod(new Uint8Array(sab, 64), 4096) })`
  for (let round = 0; round < 6; round++) {
    const workers = [0, 1, 2].map(() => new Worker(code, { eval: true }))
    const msgs = await Promise.all(
      workers.map((w) => new Promise<{ model: string; mod: number }>((res, rej) => w.once('message', res).once('error', rej))),
    )
    for (const m of msgs) t.equal(m.model, native().info().cpu.model)
    await Promise.all(workers.map((w) => w.terminate()))
  }
  t.pass('18 workers loaded and unloaded the addon')
})

t.test('weights files are mapped once per process and viewed without copies', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'hetmoe-map-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const file = join(dir, 'w.bin')
  const data = new Float32Array(4096).map((_, i) => Math.sin(i) + 2)
  writeFileSync(file, new Uint8Array(data.buffer))
  const a = native().mapWeights(file)
  const b = native().mapWeights(file)
  t.equal(a.id, b.id, 'same path, same mapping')
  t.equal(a.bytes, data.byteLength)
  const view = new Float32Array(native().weightsView(a.id, 4 * 100, 4 * 8))
  t.same(Array.from(view), Array.from(data.subarray(100, 108)))
  t.throws(() => native().weightsView(a.id, 0, data.byteLength + 4), /outside the 16384-byte file/)
  native().unmapWeights(a.id)
  t.ok(native().weightsView(a.id, 0, 4), 'still mapped: one reference left')
  native().unmapWeights(a.id)
  t.throws(() => native().weightsView(a.id, 0, 4), /is not mapped/)
  t.throws(() => native().mapWeights(join(dir, 'missing.bin')), /cannot open weights file .*missing\.bin/)
})
