// Re-placement in the runtime, on the fake GPU (no device needed): a token stream that moves from one
// RRE domain to the other makes the runtime move experts toward the new hot set in the background,
// while forwards keep running and stay correct; the budget holds throughout; `replace: false` never
// moves; failing background uploads leave a working runtime. Also GpuExpertCache.applyMoves alone.
import t, { type Test } from 'tap'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createRuntime, type Runtime, type RuntimeOptions } from '../runtime/runtime.js'
import type { ReplaceEvent } from '../runtime/replacement.js'
import { GpuExpertCache } from '../runtime/gpu-cache.js'
import { loadModel, type Model } from '../experts/model.js'
import { synthModel, PRESETS } from '../experts/synth.js'
import { relativeError } from '../experts/formats.js'
import { randomHidden, uniformTokens } from '../runtime/token-stream.js'
import { profileFromTokens, profileShares } from '../scheduler/profile.js'
import { CostModel } from '../scheduler/cost-model.js'
import { FakeGpu } from './helpers/fake-gpu.js'
import { PlanThread } from '../runtime/plan-thread.js'
import { expertShape } from '../scheduler/cost-model.js'
import { planPlacement } from '../scheduler/planner.js'
import { testCalibration } from './helpers/calibration.js'

const root = mkdtempSync(join(tmpdir(), 'hetmoe-replace-'))
t.teardown(() => rmSync(root, { recursive: true, force: true }))

let m: Model
t.before(async () => {
  const out = join(root, 'tiny')
  await synthModel({ preset: PRESETS.tiny, out, format: 'dense', seed: 5, overwrite: true })
  m = await loadModel(out)
})
t.teardown(() => m?.close())

const T = 16
const L = 2
/** Experts a domain's tokens reach, per layer (RRE: the domain's group). */
function hotSet(domain: number): number[][] {
  const p = profileFromTokens(m, uniformTokens(4096, m.manifest.vocabSize, 99), domain)
  return p.layers.map((l) => l.counts.flatMap((c, e) => (c > 0 ? [e] : [])))
}

interface Setup {
  rt: Runtime
  gpu: FakeGpu
  cpu: Runtime
  events: ReplaceEvent[]
  warnings: string[]
}

/** A hybrid runtime planned for domain 0 (its hot experts resident), a budget of exactly that many. */
async function setup(t: Test, extra: Partial<RuntimeOptions> = {}): Promise<Setup> {
  const hot0 = hotSet(0)
  const gpu = new FakeGpu(m, new Map(hot0.map((es, l) => [l, [...es]])))
  const n = hot0.reduce((s, es) => s + es.length, 0)
  // Room for n experts as the re-placement counts them (stored bytes plus device alignment), not n + 1.
  gpu.budgetBytes = n * gpu.expertBytes + n * 4096
  gpu.uploadDelayMs = 4
  const share = profileShares(profileFromTokens(m, uniformTokens(4096, m.manifest.vocabSize, 98), 0)).map((s) => Array.from(s))
  const rt = await createRuntime({
    model: m,
    cpuThreads: 2,
    arenaBytes: 8 << 20,
    _gpuBackend: gpu,
    _calibration: testCalibration(),
    // Planned for decode (batchTokens 1): then the best placement is every hot expert of the domain on
    // the GPU (at 16 tokens the planner keeps one of them on the CPU, to run both sides at once).
    plan: { layers: hot0.map((gpuExperts, layer) => ({ layer, gpuExperts })), share, batchTokens: 1 },
    replace: { halfLifeTokens: 64, checkEveryTokens: 32 },
    ...extra,
  })
  gpu.arena = rt.arena
  const cpu = await createRuntime({ model: m, gpu: 'off', cpuThreads: 1, arenaBytes: 8 << 20 })
  const events: ReplaceEvent[] = []
  const warnings: string[] = []
  rt.on('replace', (e: ReplaceEvent) => events.push(e))
  rt.on('warning', (w: string) => warnings.push(w))
  t.teardown(async () => {
    await rt.close()
    await cpu.close()
  })
  return { rt, gpu, cpu, events, warnings }
}

/** `forwards` batches of domain `domain`, `concurrent` at a time on every layer, each checked against CPU-only. */
async function traffic(t: Test, s: Setup, domain: number, forwards: number, seed: number, until?: () => boolean): Promise<{ worst: number; ran: number }> {
  let worst = 0
  let ran = 0
  const concurrent = 3
  for (let i = 0; i < forwards; i += concurrent) {
    if (until?.()) break
    // Requests arrive from I/O: let the event loop turn (CPU-only forwards of this small model settle
    // in microtasks alone, which would hold back the background uploads' completions indefinitely).
    await new Promise((r) => setImmediate(r))
    await Promise.all(
      Array.from({ length: concurrent }, async (_, j) => {
        const k = seed + i + j
        const x = randomHidden(T, m.manifest.hiddenSize, k)
        const ids = uniformTokens(T, m.manifest.vocabSize, k)
        for (let layer = 0; layer < L; layer++) {
          const [a, b] = await Promise.all([s.rt.forward(layer, x, { tokenIds: ids, domain }), s.cpu.forward(layer, x, { tokenIds: ids, domain })])
          worst = Math.max(worst, relativeError(b, a))
          ran++
        }
      }),
    )
  }
  return { worst, ran }
}

const sorted = (a: readonly number[]) => [...a].sort((x, y) => x - y)

/** No re-placement under way, and every expert of `hot` resident. */
function placedFor(s: Setup, hot: number[][]): boolean {
  const r = s.gpu.resident()
  return !s.rt.stats().gpu.replacing && hot.every((es, l) => es.every((e) => (r.get(l) ?? []).includes(e)))
}

t.test('a domain shift moves the GPU placement to the new hot experts while forwards run', async (t) => {
  const s = await setup(t)
  const hot0 = hotSet(0)
  const hot1 = hotSet(1)
  t.notSame(hot0, hot1, 'the two domains use different experts')

  const steady = await traffic(t, s, 0, 60, 1000)
  t.ok(steady.worst < 1e-2, `domain 0: outputs match CPU-only (worst ${steady.worst.toExponential(2)})`)
  t.equal(s.events.length, 0, 'no re-placement while traffic matches the plan')
  t.equal(s.gpu.uploadLog.length, 0, 'nothing moved')
  const gpuRowsBefore = s.rt.stats().layers.reduce((n, l) => n + l.gpuRows, 0)

  // Domain 1 until the placement holds its hot experts (a few re-placements may take it there, as the
  // observed load moves); every output checked meanwhile.
  const placedForDomain1 = () => placedFor(s, hot1)
  const shifted = await traffic(t, s, 1, 900, 2000, placedForDomain1)
  t.ok(shifted.worst < 1e-2, `domain 1, moves in flight: ${shifted.ran} outputs match CPU-only (worst ${shifted.worst.toExponential(2)})`)
  t.ok(placedForDomain1(), `placed for domain 1 after ${shifted.ran / L} forwards per layer`)
  t.ok(s.events.length >= 1 && s.events.length <= 4, `in ${s.events.length} re-placements`)
  for (const ev of s.events) {
    t.ok(ev.proposedS < ev.currentS && ev.drift > 0.1, `predicted ${(ev.currentS * 1e6).toFixed(1)} → ${(ev.proposedS * 1e6).toFixed(1)} µs per batch (drift ${ev.drift.toFixed(2)}), ${ev.uploaded} in, ${ev.evicted} out, ${ev.ms.toFixed(1)} ms`)
    t.same(ev.failed, [], 'every upload succeeded')
  }
  t.ok(s.gpu.runsDuringUpload > 0, `${s.gpu.runsDuringUpload} GPU layer runs started while an upload was in flight`)
  t.ok(s.gpu.maxResidentBytes <= s.gpu.budgetBytes, `the budget held: at most ${s.gpu.maxResidentBytes} of ${s.gpu.budgetBytes} bytes (reservations included)`)

  const resident = s.gpu.resident()
  for (let l = 0; l < L; l++) {
    const now = sorted(resident.get(l) ?? [])
    t.ok(hot1[l].every((e) => now.includes(e)), `layer ${l}: the new hot experts are resident (${now.join(',')})`)
    t.ok(now.every((e) => !hot0[l].includes(e) || hot1[l].includes(e)), `layer ${l}: the old ones are gone`)
  }
  const st = s.rt.stats().gpu
  t.equal(st.replacements, s.events.length)
  t.equal(st.expertsMovedIn, s.events.reduce((n, e) => n + e.uploaded, 0))
  t.ok(st.expertsMovedIn > 0 && st.expertsMovedOut > 0, `${st.expertsMovedIn} experts copied in, ${st.expertsMovedOut} dropped`)
  t.equal(st.replacing, false)

  // Domain 1 now runs on the GPU.
  const events = s.events.length
  const after = await traffic(t, s, 1, 90, 3000)
  t.ok(after.worst < 1e-2, 'outputs still match')
  t.ok(s.rt.stats().layers.reduce((n, l) => n + l.gpuRows, 0) > gpuRowsBefore, 'the GPU computes the new hot experts')
  t.equal(s.events.length, events, 'steady traffic moves nothing more')
  t.ok(s.gpu.maxResidentBytes <= s.gpu.budgetBytes, 'budget held to the end')
  t.same(s.warnings, [], 'no warnings')
})

t.test('replace: false never moves experts', async (t) => {
  const s = await setup(t, { replace: false })
  await traffic(t, s, 0, 15, 4000)
  const r = await traffic(t, s, 1, 150, 5000)
  t.ok(r.worst < 1e-2, 'outputs match CPU-only')
  t.equal(s.events.length, 0, 'no re-placement')
  t.equal(s.gpu.uploadLog.length, 0, 'no uploads, no evictions')
  t.equal(s.rt.stats().gpu.replacements, 0)
})

t.test('failing background uploads leave the runtime working, with a warning', async (t) => {
  for (const code of ['GPU_ERROR', 'GPU_OOM'] as const) {
    const s = await setup(t)
    s.gpu.failUploads = 2
    s.gpu.failUploadCode = code
    await traffic(t, s, 0, 15, 6000)
    const hot1 = hotSet(1)
    const r = await traffic(t, s, 1, 1500, 7000, () => placedFor(s, hot1))
    t.ok(r.worst < 1e-2, `${code}: every output (${r.ran}) matches CPU-only`)
    const failed = s.events.flatMap((e) => e.failed)
    t.equal(failed.length, 2, `${code}: two uploads reported failed`)
    t.ok(failed.every((f) => f.error.includes(code)), `${code}: with the backend's error`)
    t.ok(s.warnings.some((w) => /re-placement: \d+ of \d+ uploads failed/.test(w) && w.includes(code)), `${code}: a warning says so`)
    t.ok(s.events.some((e) => e.uploaded > 0), `${code}: the other uploads went through`)
    t.ok(placedFor(s, hot1), `${code}: a later re-placement brought the failed experts in (${s.events.length} re-placements)`)
    const after = await traffic(t, s, 1, 30, 8000)
    t.ok(after.worst < 1e-2 && s.rt.stats().gpu.healthy, `${code}: forwards go on, the GPU stays healthy`)
    t.ok(s.gpu.maxResidentBytes <= s.gpu.budgetBytes, `${code}: budget held`)
  }
})

t.test('replace option is validated, naming it', async (t) => {
  await t.rejects(createRuntime({ model: m, gpu: 'off', replace: 'yes' as never }), /options\.replace must be true, false or/)
  await t.rejects(createRuntime({ model: m, gpu: 'off', replace: { driftThreshold: 2 } }), /options\.replace\.driftThreshold must be a number in \(0, 1\]/)
  await t.rejects(createRuntime({ model: m, gpu: 'off', replace: { halfLife: 5 } as never }), /options\.replace must be/)
  await t.rejects(createRuntime({ model: m, gpu: 'off', plan: { layers: [], share: [[1]] } }), /options\.plan must be a plan whose share/)
})

t.test('GpuExpertCache.applyMoves: a leaving expert serves its running batch, no new one, then goes; uploads wait for room', async (t) => {
  const gpu = new FakeGpu(m, new Map([[0, [0, 1]]]))
  gpu.budgetBytes = 2 * gpu.expertBytes
  gpu.uploadDelayMs = 2
  const cache = new GpuExpertCache(gpu, m, 'hetmoe', new CostModel(testCalibration()))
  const counts = Int32Array.from([3, 2, 0, 0, 4, 0, 0, 0])
  const running = cache.choose(0, counts, 9)
  t.same(sorted([...running.onGpu]), [0, 1], 'a batch runs experts 0 and 1')

  const applied = cache.applyMoves([{ layer: 0, evict: [0, 1], upload: [4, 5] }])
  await new Promise((r) => setTimeout(r, 20))
  t.same(sorted(gpu.resident().get(0) ?? []), [0, 1], 'the running batch keeps its experts (no room for the uploads yet)')
  const next = cache.choose(0, counts, 9)
  t.same([...next.onGpu], [], 'a new batch does not take leaving experts')
  t.same(cache.placement(1), [[]], 'the placement no longer holds them')
  running.release()
  next.release()
  const r = await applied
  t.same(r, { evicted: 2, uploaded: 2, failed: [] })
  t.same(sorted(gpu.resident().get(0) ?? []), [4, 5], 'dropped after the batch, then the uploads')
  t.same(cache.placement(1), [[4, 5]])
  t.ok(gpu.maxResidentBytes <= gpu.budgetBytes, 'never over budget')
  t.same(gpu.uploadLog, ['-0/0', '-0/1', '+0/4', '+0/5'], 'evictions first, then uploads')
  const third = cache.choose(0, counts, 9)
  t.same([...third.onGpu], [4], 'the new expert serves the next batch')
  third.release()
  await t.rejects(new GpuExpertCache(gpu, m, 'on-demand-lru', undefined).applyMoves([]), /needs the 'hetmoe' strategy/)
})

t.test('GpuExpertCache.mayPrefetch: only when a cold expert of the layer fits the room left', async (t) => {
  const gpu = new FakeGpu(m, new Map([[0, [0, 1]]]))
  const cost = new CostModel(testCalibration())
  gpu.budgetBytes = 2 * gpu.expertBytes
  t.notOk(new GpuExpertCache(gpu, m, 'hetmoe', cost).mayPrefetch(0), 'the budget is full')
  gpu.budgetBytes = 3 * gpu.expertBytes
  const cache = new GpuExpertCache(gpu, m, 'hetmoe', cost)
  t.ok(cache.mayPrefetch(0), 'room for one cold expert')
  t.ok(cache.mayPrefetch(1), 'a layer with nothing resident')
  t.notOk(new GpuExpertCache(gpu, m, 'stream-at-32', cost).mayPrefetch(0), 'other strategies never prefetch')
  t.notOk(new GpuExpertCache(gpu, m, 'hetmoe', undefined).mayPrefetch(0), 'nor without a cost model')
  const all = new FakeGpu(m, new Map(m.manifest.layers.map((l, i) => [i, l.experts.map((_, e) => e)])))
  t.notOk(new GpuExpertCache(all, m, 'hetmoe', cost).mayPrefetch(1), 'every expert resident: nothing to copy (budget unbounded)')
})

t.test('the planner thread solves a placement as planPlacement does on this thread', async (t) => {
  const planner = new PlanThread()
  t.teardown(() => planner.close())
  const experts = m.manifest.layers.map((l) => l.experts.map(expertShape))
  const cost = new CostModel(testCalibration())
  for (const [domain, batchTokens] of [[0, 1], [1, 16]] as const) {
    const share = profileShares(profileFromTokens(m, uniformTokens(2048, m.manifest.vocabSize, 7 + domain), domain))
    const problem = { experts, share, batchTokens, budgetBytes: 5 * experts[0][0].bytes, cost }
    t.same(await planner.plan(problem), planPlacement(problem), `domain ${domain}, ${batchTokens} tokens a batch`)
  }
  await planner.close()
  await t.rejects(planner.plan({ experts, share: [], batchTokens: 1, budgetBytes: 0, cost }), /closed/, 'closed: a clear error')
})
