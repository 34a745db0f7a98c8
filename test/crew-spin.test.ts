// The crew's idle workers between jobs (native/cpu/crew.cc): the adaptive spin follows the gaps
// between jobs up to its bound and then lets workers sleep; a fixed spin; the settings' validation;
// early wake-ups (alert); the join trace the overhead bench reads; and a worker dying inside a gate
// job (routing must neither hang nor change: the calling thread computes the logits itself).
import t from 'tap'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Arena } from '../runtime/arena.js'
import { CpuCrew, idleSpinSetting, crewOf, spinWorkers } from '../runtime/cpu-crew.js'
import { runCpuLayer } from '../runtime/cpu-layer-job.js'
import { native } from '../runtime/native.js'
import { createRuntime } from '../runtime/runtime.js'
import { loadModel } from '../experts/model.js'
import { synthModel } from '../experts/synth.js'
import type { GateRouting } from '../experts/manifest.js'
import { buildModel, prepareJob } from './fixtures/cpu-model.js'
import { throwsHetmoe } from './helpers/expect-error.js'

// Workers copy the environment when they start: the fault-injection hook must be on before any pool.
process.env.HETMOE_TEST_HOOKS = '1'
delete process.env.HETMOE_CREW_IDLE_SPIN_US
delete process.env.HETMOE_CREW_IDLE_SPIN_MAX_US
// Every worker spins in these tests (by default one core is left to the calling thread: one worker of
// two on a 2-core machine); the last tests set it themselves.
process.env.HETMOE_CREW_SPIN_WORKERS = '64'
const isa = native().cpuIsa().levels.some((l) => l.name === 'avx2' && l.available) ? 'avx2' : 'scalar'
const sleepMs = (ms: number) => new Promise((r) => setTimeout(r, ms))
/** Off the CPU (the workers get the cores), unlike a busy gap. */
const blockUs = (us: number) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, us / 1000)
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]

async function crewWithJob(t: { teardown(f: () => unknown): void }, opts: { idleSpinUs?: 'adaptive' | number; idleSpinMaxUs?: number; threads?: number }) {
  const model = buildModel({ D: 64, F: 128, ffn: 'gelu', format: 'dense', dtype: 'bf16', count: 2, seed: 3 })
  const arena = new Arena({ bytes: 8 << 20 })
  const crew = new CpuCrew({ arena, threads: opts.threads ?? 2, ...opts })
  t.teardown(async () => {
    await crew.close()
    model.close()
  })
  const p = prepareJob(arena, model, { D: 64, F: 128, ffn: 'gelu', counts: [3, 2], T: 5, seed: 4, isa })
  // Workers only (join: false): every job is posted and every worker meets it.
  const run = () => runCpuLayer(crew, arena, p.job, { join: false })
  // Every worker has booted and serves (they boot on the first job).
  await run()
  for (let i = 0; i < 2000 && crew.stats().started < crew.threads; i++) await sleepMs(10)
  await run()
  return { crew, run, p }
}

t.test('adaptive spin: the window follows the gaps between jobs, bounded; an idle crew sleeps', async (t) => {
  const { crew, run } = await crewWithJob(t, {})
  t.same(crew.stats().idleSpin, { spinUs: 'adaptive', maxUs: 2000, workers: 2 }, 'adaptive, up to 2000 µs, by default')
  // Gaps of ~600 µs off the CPU: past the old fixed 100 µs, within the bound.
  for (let i = 0; i < 40; i++) {
    blockUs(600)
    await run()
  }
  const before = crew.stats()
  for (let i = 0; i < 60; i++) {
    blockUs(600)
    await run()
  }
  const st = crew.stats()
  t.ok(st.peakGapUs.every((p) => p >= 500 && p <= 2000), `each worker remembers a gap of about 600 µs (${st.peakGapUs.join(', ')})`)
  t.ok(st.windowUs.every((w) => w >= 750 && w <= 2000), `and spins 1.5 × that (${st.windowUs.join(', ')} µs)`)
  const caught = st.caughtSpinning - before.caughtSpinning
  const woken = st.wokenFromSleep - before.wokenFromSleep
  t.ok(caught > woken, `jobs 600 µs apart find workers spinning (${caught} arrivals spinning, ${woken} from sleep)`)
  // Idle: no worker spins past the bound; all sleep soon after (then go back to their event loops after 1 s).
  await sleepMs(60)
  t.equal(crew.stats().sleeping, crew.threads, 'an idle crew sleeps')
  // Gaps longer than the bound are the app idle, not its rhythm: they do not stretch the window.
  for (let i = 0; i < 5; i++) {
    blockUs(5000)
    await run()
  }
  const idle = crew.stats()
  t.ok(idle.windowUs.every((w) => w <= 2000), `gaps of 5 ms leave the window within the bound (${idle.windowUs.join(', ')} µs)`)
})

t.test('adaptive spin: a lower bound holds, and tight loops keep the 100 µs floor', async (t) => {
  const { crew, run } = await crewWithJob(t, { idleSpinMaxUs: 300 })
  t.same(crew.stats().idleSpin, { spinUs: 'adaptive', maxUs: 300, workers: 2 })
  for (let i = 0; i < 30; i++) {
    blockUs(600)
    await run()
  }
  const st = crew.stats()
  t.ok(st.windowUs.every((w) => w >= 100 && w <= 300), `gaps of 600 µs, bound 300: windows ${st.windowUs.join(', ')} µs`)
  for (let i = 0; i < 50; i++) await run()
  await sleepMs(150) // the peak of 600-µs gaps (not counted: above the bound) would not decay this fast
  for (let i = 0; i < 5; i++) await run()
  t.ok(crew.stats().windowUs.every((w) => w >= 100 && w <= 300), 'back to back: the floor, within the bound')
})

t.test('fixed spin 0: workers sleep at once and every posted job wakes them', async (t) => {
  const { crew, run } = await crewWithJob(t, { idleSpinUs: 0 })
  await sleepMs(5)
  const before = crew.stats()
  t.equal(before.sleeping, crew.threads, 'asleep between jobs')
  for (let i = 0; i < 10; i++) {
    await run()
    await sleepMs(2)
  }
  const st = crew.stats()
  t.same(st.windowUs, [0, 0])
  t.ok(st.wokenFromSleep - before.wokenFromSleep >= 15, `arrivals from sleep: ${st.wokenFromSleep - before.wokenFromSleep} of 20`)
})

t.test('spinning workers: one core is left to the calling thread; the others sleep at once', async (t) => {
  const { availableParallelism } = await import('node:os')
  const cores = availableParallelism()
  t.equal(spinWorkers(64, {}), Math.max(1, cores - 1), `${cores} cores: ${Math.max(1, cores - 1)} spin`)
  t.equal(spinWorkers(1, {}), 1, 'never more than the workers')
  t.equal(spinWorkers(16, { HETMOE_CREW_SPIN_WORKERS: '0' }), 0, 'the environment decides (measurements)')
  t.equal(spinWorkers(4, { HETMOE_CREW_SPIN_WORKERS: '9' }), 4)
  throwsHetmoe(t, () => spinWorkers(4, { HETMOE_CREW_SPIN_WORKERS: 'all' }), 'BAD_OPTION', /HETMOE_CREW_SPIN_WORKERS/, 'checked')
  process.env.HETMOE_CREW_SPIN_WORKERS = '1'
  t.teardown(() => void (process.env.HETMOE_CREW_SPIN_WORKERS = '64'))
  const { crew, run } = await crewWithJob(t, {})
  t.equal(crew.stats().idleSpin.workers, 1)
  for (let i = 0; i < 20; i++) {
    blockUs(300)
    await run()
  }
  await sleepMs(1)
  const st = crew.stats()
  t.ok(st.windowUs[0] >= 100, `the first worker spins (${st.windowUs[0]} µs)`)
  t.equal(st.windowUs[1], 0, 'the second sleeps at once')
})

t.test('alert: sleeping workers are woken ahead of a job and meet it spinning', async (t) => {
  // A fixed spin of 20 ms: long enough that alerted workers still spin when the job comes.
  const { crew, run } = await crewWithJob(t, { idleSpinUs: 20_000 })
  t.equal(crew.alert(0), 0, 'count 0: nothing')
  await sleepMs(80)
  t.equal(crew.stats().sleeping, 2, 'asleep after the spin')
  t.equal(crew.alert(1), 1, 'one woken by the caller')
  // The woken worker wakes the other (it passes the wake-up on while any sleeps).
  for (let i = 0; i < 200 && crew.stats().sleeping > 0; i++) await sleepMs(1)
  t.equal(crew.stats().sleeping, 0, 'both spin')
  t.equal(crew.alert(1), 0, 'none asleep: nothing to wake')
  const before = crew.stats()
  await run()
  await sleepMs(20) // a worker that found no block left counts its arrival when it gets the core
  const st = crew.stats()
  t.equal(st.caughtSpinning - before.caughtSpinning, 2, `both met the job spinning (${st.caughtSpinning - before.caughtSpinning} spinning, ${st.wokenFromSleep - before.wokenFromSleep} from sleep)`)
  t.equal(st.earlyWoken, 1)
})

t.test('idle spin settings: options, environment overrides, validation', async (t) => {
  t.same(idleSpinSetting({}, {}), { spinUs: 'adaptive', maxUs: 2000 })
  t.same(idleSpinSetting({ idleSpinUs: 250 }, {}), { spinUs: 250, maxUs: 2000 })
  t.same(idleSpinSetting({ idleSpinUs: 'adaptive', idleSpinMaxUs: 500 }, {}), { spinUs: 'adaptive', maxUs: 500 })
  t.same(idleSpinSetting({ idleSpinUs: 250 }, { HETMOE_CREW_IDLE_SPIN_US: 'adaptive', HETMOE_CREW_IDLE_SPIN_MAX_US: '800' }), { spinUs: 'adaptive', maxUs: 800 }, 'the environment wins (measurements)')
  t.same(idleSpinSetting({}, { HETMOE_CREW_IDLE_SPIN_US: '0' }), { spinUs: 0, maxUs: 2000 })
  for (const bad of [-1, 1.5, 2_000_001, NaN, 'fast', '100'])
    throwsHetmoe(t, () => idleSpinSetting({ idleSpinUs: bad as never }, {}), 'BAD_OPTION', /options\.cpuIdleSpinUs must be 'adaptive' or an integer/, `cpuIdleSpinUs ${String(bad)}`)
  throwsHetmoe(t, () => idleSpinSetting({ idleSpinMaxUs: 'adaptive' as never }, {}), 'BAD_OPTION', /options\.cpuIdleSpinMaxUs must be an integer/, 'the bound is a number')
  throwsHetmoe(t, () => idleSpinSetting({}, { HETMOE_CREW_IDLE_SPIN_US: '-5' }), 'BAD_OPTION', /HETMOE_CREW_IDLE_SPIN_US .*"-5"/, 'env checked too')
  throwsHetmoe(t, () => idleSpinSetting({}, { HETMOE_CREW_IDLE_SPIN_MAX_US: '2ms' }), 'BAD_OPTION', /HETMOE_CREW_IDLE_SPIN_MAX_US/, 'env bound checked too')
  // createRuntime refuses before it allocates anything.
  const dir = mkdtempSync(join(tmpdir(), 'hetmoe-spin-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  await synthModel({ preset: { name: 's', layers: 1, hidden: 64, inner: 32, ffn: 'swiglu', routing: { kind: 'gate', experts: 4, topK: 2, normalize: true }, vocabSize: 100 }, out: join(dir, 'm') })
  const model = await loadModel(join(dir, 'm'))
  t.teardown(() => model.close())
  await t.rejects(createRuntime({ model, gpu: 'off', cpuIdleSpinUs: -3 }), { code: 'BAD_OPTION' })
  const rt = await createRuntime({ model, gpu: 'off', cpuThreads: 1, cpuIdleSpinUs: 300 })
  t.same(crewOf(rt.arena)!.stats().idleSpin, { spinUs: 300, maxUs: 2000, workers: 1 }, 'the runtime passes its options to the crew')
  await rt.close()
})

t.test('join trace: where a joined job\'s time went (the overhead bench reads it)', async (t) => {
  const model = buildModel({ D: 64, F: 128, ffn: 'swiglu', format: 'dense', dtype: 'bf16', count: 3, seed: 5 })
  const arena = new Arena({ bytes: 8 << 20 })
  const crew = new CpuCrew({ arena, threads: 2 })
  t.teardown(async () => {
    native().crewTrace(false)
    await crew.close()
    model.close()
  })
  const p = prepareJob(arena, model, { D: 64, F: 128, ffn: 'swiglu', counts: [4, 5, 3], T: 8, seed: 6, isa })
  const a = native()
  const tr = new Float64Array(12)
  a.crewTrace(true)
  const seq = a.crewLastJoin(tr)[9]
  const stats = await runCpuLayer(crew, arena, p.job, { join: true, solo: false })
  a.crewLastJoin(tr)
  t.equal(tr[9], seq + 1, 'one join traced')
  t.equal(tr[5], stats.blocks, 'its blocks')
  t.ok(tr[4] >= 1 && tr[4] <= stats.blocks, `the calling thread ran ${tr[4]} of them`)
  t.ok(tr[0] >= 0 && tr[0] <= tr[1] && tr[1] <= tr[2] && tr[2] <= tr[3], `posted ${tr[0].toFixed(1)} ≤ main done ${tr[1].toFixed(1)} ≤ waited ${tr[2].toFixed(1)} ≤ retired ${tr[3].toFixed(1)} µs`)
  t.same(p.verify(1e-4).failures, [])
  a.crewTrace(false)
  await runCpuLayer(crew, arena, p.job, { join: true, solo: false })
  t.equal(a.crewLastJoin(tr)[9], seq + 1, 'tracing off: nothing recorded')
})

t.test('a worker dying inside a gate job: routing neither hangs nor changes', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'hetmoe-gate-death-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const D = 1024, E = 64, T = 256
  await synthModel({ preset: { name: 'g', layers: 1, hidden: D, inner: 32, ffn: 'swiglu', routing: { kind: 'gate', experts: E, topK: 2, normalize: true }, vocabSize: 100 }, out: join(dir, 'm') })
  const model = await loadModel(join(dir, 'm'))
  const rt = await createRuntime({ model, gpu: 'off', cpuThreads: 2 })
  t.teardown(async () => {
    await rt.close()
    model.close()
  })
  const crew = crewOf(rt.arena)!
  const gate = { weightsId: model.weightsId, offset: (model.layer(0).routing as GateRouting).weight.offset }
  const x = rt.arena.lease(T * D * 4).f32(T * D)
  for (let i = 0; i < x.length; i++) x[i] = Math.sin(i * 0.37) * (1 + (i % 5))
  const logits = rt.arena.lease(T * E * 8).f64(T * E)
  const single = new Float64Array(T * E)
  native().gateLogits(x, model.gateWeight(0), T, D, E, single)
  // Workers boot on the crew's first job: wait until both serve.
  t.equal(crew.gateLogits(x, gate, T, D, E, logits, 0), -1)
  for (let i = 0; i < 2000 && crew.stats().started < 2; i++) await sleepMs(10)
  t.equal(crew.gateLogits(x, gate, T, D, E, logits, 0), -1, 'the crew computes (workers serving)')
  t.ok(logits.every((v, i) => Object.is(v, single[i])), 'same bits')
  // 64 blocks of ~256K products each: the workers, spinning after the last call, claim some while
  // this thread runs its first; the first to claim dies holding it. (If this thread happened to take
  // every block, try again.)
  let died = 0
  for (let attempt = 0; attempt < 20 && !died; attempt++) {
    const t0 = performance.now()
    const r = crew.gateLogits(x, gate, T, D, E, logits, 0, 1)
    const ms = performance.now() - t0
    if (r === undefined) {
      died++
      t.ok(ms < 5000, `returned after ${ms.toFixed(0)} ms: the caller computes the logits`)
    } else t.equal(r, -1)
  }
  t.equal(died, 1, 'a worker died inside a gate job, and the call returned')
  await sleepMs(50) // the death reaches the runtime on this event loop; a replacement starts
  logits.fill(NaN)
  t.equal(crew.gateLogits(x, gate, T, D, E, logits, 0), -1, 'the crew computes again')
  t.ok(logits.every((v, i) => Object.is(v, single[i])), 'same bits')
  // Forwards route and run as before (a layer job on the board after the gate job).
  const out = await rt.forward(0, x.slice(0, 4 * D))
  t.equal(out.length, 4 * D)
  t.ok(out.every(Number.isFinite))
})

// A worker back in its event loop serves again only once this thread's event loop turns (piscina hears
// there that its serve task ended), so workers stay in crewServe while forwards come, posted or not:
// a decode loop of synchronous forwards whose jobs all ran alone for a second used to leave them out
// for good (bench overhead: the tiny model's 16-token layers after its 1- and 4-token ones).
t.test('serving workers stay while forwards come, even with nothing posted; they leave when none comes', async (t) => {
  const { crew } = await crewWithJob(t, {})
  const busyMs = (ms: number, each: () => void) => {
    const end = performance.now() + ms
    while (performance.now() < end) {
      each()
      blockUs(500)
    }
  }
  // 1.3 s (past the serve idle timeout) of forwards without a post, this thread never yielding.
  busyMs(1300, () => crew.alert())
  t.equal(crew.stats().sleeping, crew.threads, 'every worker still waits in crewServe')
  // The same without forwards: they go back to their event loops.
  busyMs(1300, () => {})
  t.equal(crew.stats().sleeping, 0, 'with no forward for the idle timeout, none waits there')
})
