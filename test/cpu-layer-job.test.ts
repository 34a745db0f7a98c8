// The layer job through the real worker pool: several experts, fewer workers than blocks, a worker
// that dies mid-job (recovered once, then a clear WORKER_DIED), and abort.
import t from 'tap'
import { Arena } from '../runtime/arena.js'
import { CpuPool } from '../runtime/pool.js'
import { runCpuLayer } from '../runtime/cpu-layer-job.js'
import { native } from '../runtime/native.js'
import { buildModel, prepareJob } from './fixtures/cpu-model.js'

// Workers copy the environment when they start: the fault-injection hook must be on before the pool.
process.env.HETMOE_TEST_HOOKS = '1'
const seed = Number(process.env.HETMOE_TEST_SEED ?? Date.now() % 1e9)
t.comment(`seed ${seed}`)
const isa = native().cpuIsa().levels.some((l) => l.name === 'avx2' && l.available) ? 'avx2' : 'scalar'
const D = 256
const F = 352
const COUNTS = [5, 0, 1, 9, 2]

t.test('several experts on the pool, every output row checked', async (t) => {
  const model = buildModel({ D, F, ffn: 'swiglu', format: '2:4', dtype: 'bf16', count: COUNTS.length, seed })
  const arena = new Arena({ bytes: 16 << 20 })
  const pool = new CpuPool({ arena, threads: 2 })
  t.teardown(async () => {
    await pool.close()
    model.close()
  })
  const p = prepareJob(arena, model, { D, F, ffn: 'swiglu', counts: COUNTS, T: 23, seed: seed + 1, isa })
  const stats = await runCpuLayer(pool, arena, p.job)
  t.equal(stats.blocks, COUNTS.length * (Math.ceil(F / 128) + Math.ceil(D / 128)))
  t.equal(stats.retried, false)
  const v = p.verify(1e-4)
  t.same(v.failures, [])
  t.ok(v.untouched, 'unselected rows untouched')
  // Overwrite semantics: running again gives the same outputs, not twice them.
  const first = p.out.slice()
  await runCpuLayer(pool, arena, p.job)
  t.ok(p.out.every((x, i) => Object.is(x, first[i]) || x === first[i]), 'a second run overwrites with the same values')
})

t.test('one worker alone finishes a job of many blocks (no fixed-participant barrier)', async (t) => {
  const model = buildModel({ D, F, ffn: 'gelu', format: 'dense', dtype: 'bf16', count: COUNTS.length, seed: seed + 2 })
  const arena = new Arena({ bytes: 16 << 20 })
  const pool = new CpuPool({ arena, threads: 2 })
  t.teardown(async () => {
    await pool.close()
    model.close()
  })
  const p = prepareJob(arena, model, { D, F, ffn: 'gelu', counts: COUNTS, T: 17, seed: seed + 3, isa })
  const stats = await runCpuLayer(pool, arena, p.job, { workers: 1 })
  t.equal(stats.workersJoined, 1)
  t.same(p.verify(1e-4).failures, [])
})

t.test('a worker that dies mid-job: the job is rerun once on fresh workers; twice is WORKER_DIED', async (t) => {
  const model = buildModel({ D, F, ffn: 'swiglu', format: '75%', dtype: 'fp32', count: COUNTS.length, seed: seed + 4 })
  const arena = new Arena({ bytes: 16 << 20 })
  const pool = new CpuPool({ arena, threads: 2 })
  t.teardown(async () => {
    await pool.close()
    model.close()
  })
  const p = prepareJob(arena, model, { D, F, ffn: 'swiglu', counts: COUNTS, T: 19, seed: seed + 5, isa })
  const stats = await runCpuLayer(pool, arena, p.job, { testDieCount: 1 })
  t.equal(stats.retried, true, 'the job was run again')
  const v = p.verify(1e-4)
  t.same(v.failures, [])
  t.ok(v.untouched)
  const free = arena.freeBytes
  await t.rejects(runCpuLayer(pool, arena, p.job, { testDieCount: 1000 }), {
    code: 'WORKER_DIED',
    message: /died again while re-running the layer job/,
  })
  t.equal(arena.freeBytes, free, 'the descriptor lease was released')
  // The pool recovers and the next job runs normally.
  await new Promise((r) => setTimeout(r, 50))
  const again = await runCpuLayer(pool, arena, p.job)
  t.equal(again.retried, false)
  t.same(p.verify(1e-4).failures, [])
})

t.test('abort: workers stop claiming, the job rejects with ABORTED', async (t) => {
  // Big enough on the scalar kernels to still be running when the signal fires.
  const model = buildModel({ D: 512, F: 1024, ffn: 'gelu', format: 'dense', dtype: 'bf16', count: 2, seed: seed + 6 })
  const arena = new Arena({ bytes: 64 << 20 })
  const pool = new CpuPool({ arena, threads: 2 })
  t.teardown(async () => {
    await pool.close()
    model.close()
  })
  // Many small blocks (a few ms each on scalar), so a worker notices the flag soon even on a loaded machine.
  // 2 × 1024 routed rows on scalar kernels: hundreds of ms even on an idle machine, so the abort at
  // 30 ms always lands mid-job (with 2 × 96 rows an idle machine finished in 43 ms, before the abort).
  const p = prepareJob(arena, model, { D: 512, F: 1024, ffn: 'gelu', counts: [1024, 1024], T: 64, seed: seed + 7, isa: 'scalar' })
  // Workers boot (thread start, addon load) before they take a task: wait for that, so the time below is
  // the job's reaction to the abort, not the pool's start-up on a loaded machine.
  await Promise.all([pool.run({ op: 'ping' }), pool.run({ op: 'ping' })])
  const tf = performance.now()
  await runCpuLayer(pool, arena, p.job)
  const fullMs = performance.now() - tf
  const ac = new AbortController()
  const t0 = performance.now()
  setTimeout(() => ac.abort(), 30)
  await t.rejects(runCpuLayer(pool, arena, p.job, { signal: ac.signal }), { code: 'ABORTED' })
  const ms = performance.now() - t0
  t.ok(ms < fullMs / 2, `returned soon after the abort (${ms.toFixed(0)} ms; the whole job takes ${fullMs.toFixed(0)} ms)`)
  await t.rejects(runCpuLayer(pool, arena, p.job, { signal: ac.signal }), { code: 'ABORTED' }, 'an aborted signal refuses at once')
})
