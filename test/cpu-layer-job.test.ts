// The layer job through the crew (real worker threads serving a board): several experts, the main
// thread joining or not, one worker alone, jobs queued concurrently, a worker that dies mid-job
// (recovered once, then a clear WORKER_DIED), and abort.
import t from 'tap'
import { Arena } from '../runtime/arena.js'
import { CpuCrew } from '../runtime/cpu-crew.js'
import { blockRows, encodeCpuLayerJob, runCpuLayer } from '../runtime/cpu-layer-job.js'
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

t.test('several experts on the crew, every output row checked, with and without the main thread', async (t) => {
  const model = buildModel({ D, F, ffn: 'swiglu', format: '2:4', dtype: 'bf16', count: COUNTS.length, seed })
  const arena = new Arena({ bytes: 16 << 20 })
  const crew = new CpuCrew({ arena, threads: 2 })
  t.teardown(async () => {
    await crew.close()
    model.close()
  })
  const p = prepareJob(arena, model, { D, F, ffn: 'swiglu', counts: COUNTS, T: 23, seed: seed + 1, isa })
  const stats = await runCpuLayer(crew, arena, p.job)
  // 5 experts × (3 + 2) blocks of 128 rows go round a crew of 2 (and the main thread) twice.
  const rows = Number(process.env.HETMOE_CPU_BLOCK_ROWS || 128)
  t.equal(stats.blocks, COUNTS.length * (Math.ceil(F / rows) + Math.ceil(D / rows)))
  t.equal(stats.retried, false)
  t.equal(stats.joined, true, 'a small job is joined by the main thread')
  const v = p.verify(1e-4)
  t.same(v.failures, [])
  t.ok(v.untouched, 'unselected rows untouched')
  // Overwrite semantics: running again gives the same outputs, not twice them; workers alone this time.
  const first = p.out.slice()
  const alone = await runCpuLayer(crew, arena, p.job, { join: false })
  t.equal(alone.joined, false)
  t.ok(p.out.every((x, i) => Object.is(x, first[i]) || x === first[i]), 'a second run overwrites with the same values')
})

t.test('the tiniest jobs run on the calling thread alone: nothing posted, the same bits as the crew', async (t) => {
  // D=64, F=128: one expert with one token is 48 KB·token of work (bf16), under SOLO_MAX_WORK.
  const model = buildModel({ D: 64, F: 128, ffn: 'swiglu', format: 'dense', dtype: 'bf16', count: 3, seed: seed + 20 })
  const arena = new Arena({ bytes: 16 << 20 })
  const crew = new CpuCrew({ arena, threads: 2 })
  t.teardown(async () => {
    await crew.close()
    model.close()
  })
  const tiny = prepareJob(arena, model, { D: 64, F: 128, ffn: 'swiglu', counts: [1, 0, 1], T: 2, seed: seed + 21, isa })
  const posts = crew.posts
  const alone = await runCpuLayer(crew, arena, tiny.job)
  t.equal(alone.solo, true, 'run alone')
  t.equal(crew.posts, posts, 'nothing posted to the workers')
  t.same(tiny.verify(1e-4).failures, [])
  const soloBits = tiny.out.slice()
  tiny.out.fill(NaN)
  const workers = await runCpuLayer(crew, arena, tiny.job, { join: false })
  t.equal(workers.solo, false)
  t.equal(crew.posts, posts + 1, 'posted once')
  t.ok(tiny.out.every((x, i) => Object.is(x, soloBits[i])), 'workers alone give the same bits')
  // A job of many blocks asked to run alone: the same bits as the crew and the main thread together.
  const big = prepareJob(arena, model, { D: 64, F: 128, ffn: 'swiglu', counts: [9, 5, 17], T: 20, seed: seed + 22, isa })
  const crewRun = await runCpuLayer(crew, arena, big.job, { solo: false })
  t.equal(crewRun.solo, false)
  t.same(big.verify(1e-4).failures, [])
  const crewBits = big.out.slice()
  big.out.fill(NaN)
  const forced = await runCpuLayer(crew, arena, big.job, { solo: true })
  t.equal(forced.solo, true)
  t.ok(big.out.every((x, i) => Object.is(x, crewBits[i])), 'alone: the same bits')
  // A test death needs workers: testDieCount never runs alone.
  const hooked = await runCpuLayer(crew, arena, tiny.job, { testDieCount: 0 })
  t.equal(hooked.solo, true, 'testDieCount 0 is no death')
})

t.test('joined jobs with a dying worker: the main thread waits, the job reruns, results are right', async (t) => {
  // The main thread joins (the path a decode layer takes); a worker may claim a block and die with it,
  // so the join finds a block it cannot finish: it waits, learns of the death, and the job reruns.
  const model = buildModel({ D, F, ffn: 'gelu', format: 'dense', dtype: 'bf16', count: COUNTS.length, seed: seed + 23 })
  const arena = new Arena({ bytes: 16 << 20 })
  const crew = new CpuCrew({ arena, threads: 2 })
  t.teardown(async () => {
    await crew.close()
    model.close()
  })
  // Scalar kernels and ~140 routed rows: each block takes a millisecond or more, so the workers claim
  // blocks while the main thread is still on its first ones.
  const p = prepareJob(arena, model, { D, F, ffn: 'gelu', counts: [40, 0, 30, 50, 20], T: 64, seed: seed + 24, isa: 'scalar' })
  await runCpuLayer(crew, arena, p.job, { join: false }) // the workers are serving before the timed runs
  let retried = 0
  for (let i = 0; i < 3; i++) {
    p.out.fill(NaN)
    const stats = await runCpuLayer(crew, arena, p.job, { testDieCount: 1, join: true })
    t.equal(stats.joined, true)
    if (stats.retried) retried++
    t.same(p.verify(1e-4).failures, [], `run ${i}`)
  }
  t.ok(retried > 0, `${retried} of 3 joined runs lost a worker and reran`)
})

t.test('jobs with too few blocks for the crew are cut into finer blocks, with the same results', async (t) => {
  const job = (D: number, F: number, experts: number) => ({ hiddenSize: D, ffnSize: F, experts: new Array(experts) }) as unknown as Parameters<typeof blockRows>[0]
  t.equal(blockRows(job(4096, 14336, 2), 16), 128, 'a real expert has blocks to spare')
  t.equal(blockRows(job(64, 128, 8), 16), 32, 'the tiny model at 16 tokens: 8 × (1 + 1) blocks of 128 rows for 17 threads')
  t.equal(blockRows(job(64, 128, 8), 2), 128, 'the same job for 3 threads')
  t.equal(blockRows(job(256, 512, 2), 8), 64, '2 × (4 + 2) = 12 blocks of 128 rows for 9 threads, 2 × (8 + 4) = 24 of 64')
  // 32-row blocks on a crew of 16 workers (most of them serving): every output row checked.
  const model = buildModel({ D: 64, F: 128, ffn: 'swiglu', format: 'dense', dtype: 'bf16', count: 8, seed: seed + 25 })
  const arena = new Arena({ bytes: 16 << 20 })
  const crew = new CpuCrew({ arena, threads: 16 })
  t.teardown(async () => {
    await crew.close()
    model.close()
  })
  const p = prepareJob(arena, model, { D: 64, F: 128, ffn: 'swiglu', counts: [4, 4, 3, 5, 4, 4, 2, 6], T: 16, seed: seed + 26, isa })
  for (let i = 0; i < 3; i++) {
    p.out.fill(NaN)
    const stats = await runCpuLayer(crew, arena, p.job)
    t.equal(stats.blocks, process.env.HETMOE_CPU_BLOCK_ROWS ? stats.blocks : 8 * (4 + 2), '32-row blocks')
    t.same(p.verify(1e-4).failures, [])
  }
})

t.test('a block table that names a phase or row outside the job is refused before any block runs', async (t) => {
  const model = buildModel({ D, F, ffn: 'gelu', format: 'dense', dtype: 'bf16', count: 1, seed: seed + 32 })
  const arena = new Arena({ bytes: 16 << 20 })
  t.teardown(() => model.close())
  const p = prepareJob(arena, model, { D, F, ffn: 'gelu', counts: [12], T: 12, seed: seed + 33, isa })
  const enc = encodeCpuLayerJob(arena, p.job, { rowsPerBlock: 128 })
  const blocksAt = new Int32Array(arena.buffer, enc.descOffset, 32)[22] // the block table (low word)
  const block0 = new Int32Array(arena.buffer, blocksAt, 4)
  const run = () => native().cpuLayerRun(new Uint8Array(arena.buffer), enc.descOffset, false)
  for (const [phase, row, what] of [[3, 0, /block 0 has phase 3 and row 0/], [1, F, new RegExp(`block 0 has phase 1 and row ${F}`)], [1, -32, /row -32/]] as const) {
    block0[3] = phase
    block0[2] = row
    t.throws(run, what)
    t.equal(block0[0], 0, 'block 0 still free: nothing was claimed')
  }
  block0[3] = 1
  block0[2] = 0
  p.out.fill(NaN)
  t.equal(run().status, 'done')
  t.same(p.verify(1e-4).failures, [], 'mended, the job runs')
  enc.release()
})

t.test('jobs started at once run one after another, each correct', async (t) => {
  const model = buildModel({ D, F, ffn: 'swiglu', format: 'dense', dtype: 'bf16', count: COUNTS.length, seed: seed + 8 })
  const arena = new Arena({ bytes: 32 << 20 })
  const crew = new CpuCrew({ arena, threads: 2 })
  t.teardown(async () => {
    await crew.close()
    model.close()
  })
  const jobs = [0, 1, 2, 3].map((i) => prepareJob(arena, model, { D, F, ffn: 'swiglu', counts: COUNTS, T: 11 + i, seed: seed + 9 + i, isa }))
  for (const p of jobs) p.out.fill(NaN)
  await Promise.all(jobs.map((p, i) => runCpuLayer(crew, arena, p.job, { join: i % 2 === 0 })))
  for (const p of jobs) t.same(p.verify(1e-4).failures, [])
})

t.test('one worker alone finishes a job of many blocks (no fixed-participant barrier)', async (t) => {
  const model = buildModel({ D, F, ffn: 'gelu', format: 'dense', dtype: 'bf16', count: COUNTS.length, seed: seed + 2 })
  const arena = new Arena({ bytes: 16 << 20 })
  const crew = new CpuCrew({ arena, threads: 1 })
  t.teardown(async () => {
    await crew.close()
    model.close()
  })
  const p = prepareJob(arena, model, { D, F, ffn: 'gelu', counts: COUNTS, T: 17, seed: seed + 3, isa })
  const stats = await runCpuLayer(crew, arena, p.job, { join: false })
  t.equal(stats.joined, false)
  t.same(p.verify(1e-4).failures, [])
})

t.test('a worker that dies mid-job: the job is rerun once on fresh workers; twice is WORKER_DIED', async (t) => {
  const model = buildModel({ D, F, ffn: 'swiglu', format: '75%', dtype: 'fp32', count: COUNTS.length, seed: seed + 4 })
  const arena = new Arena({ bytes: 16 << 20 })
  const crew = new CpuCrew({ arena, threads: 2 })
  t.teardown(async () => {
    await crew.close()
    model.close()
  })
  const p = prepareJob(arena, model, { D, F, ffn: 'swiglu', counts: COUNTS, T: 19, seed: seed + 5, isa })
  // Workers only: a main thread that joins could finish every block before a worker claims one.
  const stats = await runCpuLayer(crew, arena, p.job, { testDieCount: 1, join: false })
  t.equal(stats.retried, true, 'the job was run again')
  const v = p.verify(1e-4)
  t.same(v.failures, [])
  t.ok(v.untouched)
  const free = arena.freeBytes
  await t.rejects(runCpuLayer(crew, arena, p.job, { testDieCount: 1000, join: false }), {
    code: 'WORKER_DIED',
    message: /died again while re-running the layer job/,
  })
  t.equal(arena.freeBytes, free, 'the descriptor lease was released')
  // The crew recovers (dead workers replaced) and the next job runs normally.
  const again = await runCpuLayer(crew, arena, p.job, { join: false })
  t.equal(again.retried, false)
  t.same(p.verify(1e-4).failures, [])
})

t.test('a job that admits one worker: it alone computes the job, and again after it died holding a block', async (t) => {
  const model = buildModel({ D, F, ffn: 'swiglu', format: 'dense', dtype: 'fp32', count: COUNTS.length, seed: seed + 12 })
  const arena = new Arena({ bytes: 16 << 20 })
  const crew = new CpuCrew({ arena, threads: 2 })
  t.teardown(async () => {
    await crew.close()
    model.close()
  })
  const p = prepareJob(arena, model, { D, F, ffn: 'swiglu', counts: COUNTS, T: 19, seed: seed + 13, isa })
  // Workers only: the calling thread would otherwise finish what the one admitted worker leaves.
  const once = await runCpuLayer(crew, arena, p.job, { join: false, maxWorkers: 1 })
  t.equal(once.joined, false)
  t.same(p.verify(1e-4).failures, [])
  // The rerun after a death admits a worker again (the count of entrants starts over), or it would hang.
  const rerun = await runCpuLayer(crew, arena, p.job, { join: false, maxWorkers: 1, testDieCount: 1 })
  t.equal(rerun.retried, true, 'the job was run again')
  t.same(p.verify(1e-4).failures, [])
})

t.test('abort: workers stop claiming, the job rejects with ABORTED', async (t) => {
  // Big enough on the scalar kernels to still be running when the signal fires.
  const model = buildModel({ D: 512, F: 1024, ffn: 'gelu', format: 'dense', dtype: 'bf16', count: 2, seed: seed + 6 })
  const arena = new Arena({ bytes: 64 << 20 })
  const crew = new CpuCrew({ arena, threads: 2 })
  t.teardown(async () => {
    await crew.close()
    model.close()
  })
  // Many small blocks (a few ms each on scalar), so a worker notices the flag soon even on a loaded machine.
  // 2 × 1024 routed rows on scalar kernels: hundreds of ms even on an idle machine, so the abort at
  // 30 ms always lands mid-job (with 2 × 96 rows an idle machine finished in 43 ms, before the abort).
  const p = prepareJob(arena, model, { D: 512, F: 1024, ffn: 'gelu', counts: [1024, 1024], T: 64, seed: seed + 7, isa: 'scalar' })
  // Workers boot (thread start, addon load) before they serve: one run first, so the time below is the
  // job's reaction to the abort, not the crew's start-up on a loaded machine. Workers only (join:
  // false): a main thread running blocks could not see the timer fire.
  await runCpuLayer(crew, arena, p.job, { join: false })
  const tf = performance.now()
  await runCpuLayer(crew, arena, p.job, { join: false })
  const fullMs = performance.now() - tf
  const ac = new AbortController()
  const t0 = performance.now()
  setTimeout(() => ac.abort(), 30)
  await t.rejects(runCpuLayer(crew, arena, p.job, { signal: ac.signal, join: false }), { code: 'ABORTED' })
  const ms = performance.now() - t0
  t.ok(ms < fullMs / 2, `returned soon after the abort (${ms.toFixed(0)} ms; the whole job takes ${fullMs.toFixed(0)} ms)`)
  await t.rejects(runCpuLayer(crew, arena, p.job, { signal: ac.signal }), { code: 'ABORTED' }, 'an aborted signal refuses at once')
})

t.test('a crew that is never closed does not keep the process alive once its workers idle', async (t) => {
  const { spawnSync } = await import('node:child_process')
  const here = new URL('.', import.meta.url).pathname
  // The child serves one job and leaves without close(): its workers return to their event loops
  // after the crew's idle time, and an idle piscina worker does not hold the process.
  const script = `
    const { Arena } = await import(${JSON.stringify(here + '../runtime/arena.js')})
    const { CpuCrew } = await import(${JSON.stringify(here + '../runtime/cpu-crew.js')})
    const { runCpuLayer } = await import(${JSON.stringify(here + '../runtime/cpu-layer-job.js')})
    const { buildModel, prepareJob } = await import(${JSON.stringify(here + 'fixtures/cpu-model.js')})
    const model = buildModel({ D: 64, F: 128, ffn: 'gelu', format: 'dense', dtype: 'bf16', count: 2, seed: 1 })
    const arena = new Arena({ bytes: 8 << 20 })
    const crew = new CpuCrew({ arena, threads: 2 })
    const p = prepareJob(arena, model, { D: 64, F: 128, ffn: 'gelu', counts: [3, 2], T: 5, seed: 2, isa: 'scalar' })
    await runCpuLayer(crew, arena, p.job, { join: false })
    console.log('served')`
  const t0 = performance.now()
  // A plain node: the runner's coverage hook, which it adds to every child's NODE_OPTIONS, keeps a
  // child alive on its own; `env -u` drops it after the runner's spawn wrapper has added it.
  const r = spawnSync('env', ['-u', 'NODE_OPTIONS', process.execPath, '--input-type=module', '-e', script], { encoding: 'utf8', timeout: 30_000 })
  t.equal(r.stdout.trim(), 'served', r.stderr)
  t.equal(r.status, 0, `exited by itself after ${((performance.now() - t0) / 1000).toFixed(1)} s`)
})
