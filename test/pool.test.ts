import t from 'tap'
import { fileURLToPath } from 'node:url'
import { Arena } from '../runtime/arena.js'
import { CpuPool } from '../runtime/pool.js'
import type { WorkerResult } from '../runtime/worker-protocol.js'

const dying = fileURLToPath(new URL('./fixtures/dying-worker.js', import.meta.url))

t.test('workers load the addon and see the arena', async (t) => {
  const arena = new Arena({ bytes: 1 << 20 })
  const pool = new CpuPool({ arena, threads: 2 })
  t.teardown(() => pool.close())
  const pings = await Promise.all([1, 2, 3, 4].map(() => pool.run({ op: 'ping' })))
  for (const p of pings) {
    t.equal(p.op, 'ping')
    if (p.op === 'ping') {
      t.equal(p.arenaBytes, arena.buffer.byteLength)
      t.type(p.cpuModel, 'string')
    }
  }
  // A worker writes, the main thread reads the same memory: tasks carry offsets, not buffers.
  const lease = arena.lease(4096)
  await pool.run({ op: 'fill', offset: lease.offset, count: 1024, value: 2.5 })
  t.ok(lease.f32().every((v) => v === 2.5))
})

t.test('a worker that dies mid-task fails that task clearly and is replaced', async (t) => {
  const arena = new Arena({ bytes: 1 << 16 })
  const pool = new CpuPool({ arena, threads: 2 })
  t.teardown(() => pool.close())
  await pool.run({ op: 'ping' })
  await t.rejects(pool.run({ op: 'ping' }, { filename: dying }), {
    code: 'WORKER_DIED',
    message: /a CPU worker died while running a "ping" task \(worker exited with code: 3\)/,
  })
  // The pool still serves tasks, on a fresh worker.
  const results = await Promise.all([1, 2, 3].map(() => pool.run<WorkerResult>({ op: 'ping' })))
  t.equal(results.length, 3)
  await new Promise((r) => setTimeout(r, 50))
  t.equal(pool.liveThreads, 2, 'back to full strength')
})

t.test('close() lets running tasks finish; a closed pool refuses work', async (t) => {
  const arena = new Arena({ bytes: 1 << 16 })
  const pool = new CpuPool({ arena, threads: 1 })
  const running = pool.run({ op: 'ping' })
  await pool.close()
  t.equal((await running).op, 'ping')
  await t.rejects(pool.run({ op: 'ping' }), { code: 'POOL_CLOSED' })
})

t.test('bad thread counts name the option', async (t) => {
  const arena = new Arena({ bytes: 1 << 16 })
  t.throws(() => new CpuPool({ arena, threads: 0 }), /options\.cpuThreads must be a positive integer/)
})

t.test('pools closed while their workers are still loading the addon do not bring the process down', async (t) => {
  // Seen on a 16-core machine: a worker terminated during the addon's Init made Node-API unable to
  // throw, and the C++ exception aborted the process.
  for (let i = 0; i < 8; i++) {
    const arena = new Arena({ bytes: 1 << 16 })
    const pool = new CpuPool({ arena, threads: 4 })
    await (i % 2 ? pool.close() : pool.destroy())
  }
  t.pass('still alive')
})
