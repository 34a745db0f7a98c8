import t from 'tap'
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import {
  calibrate, calibrationCachePath, defaultProbes, describeCalibration, fitLine, JOB_SPREAD, loadCalibration, type Probe,
} from '../scheduler/calibrate.js'
import { CostModel, evalRoofline, expectedRooflineTime, expertShape, matrixBytes, type ExpertShape, type FormatKey } from '../scheduler/cost-model.js'
import { testCalibration } from './helpers/calibration.js'
import { tempDir } from './helpers/model-dir.js'
import { driverGpuName } from '../runtime/calibration.js'
import { LayerTimeModel } from '../scheduler/layer-time.js'
import { planStreaming } from '../scheduler/streaming.js'

t.test('matrix bytes by format follow layout.h: a 75% matrix is ~5/16 of dense bf16', async (t) => {
  const dense = matrixBytes(8192, 2048, 'dense', 'bf16')
  t.equal(dense, 8192 * 2048 * 2)
  t.equal(matrixBytes(8192, 2048, 'dense', 'fp32'), 2 * dense)
  t.equal(matrixBytes(8192, 2048, '2:4', 'bf16') / dense, 10 / 16, '2:4: half the values plus one uint32 per 16 columns')
  const r75 = matrixBytes(8192, 2048, '75%', 'bf16') / dense
  t.ok(Math.abs(r75 - 5 / 16) < 0.003, `75%: ${r75.toFixed(4)} of dense`)
  const m = (format: '75%' | 'dense') => ({ rows: 8192, cols: 2048, format, dtype: 'bf16' as const, values: { offset: 0, bytes: matrixBytes(8192, 2048, format, 'bf16') } })
  const shape = expertShape({ up: m('dense'), down: { ...m('dense'), rows: 2048, cols: 8192 } })
  t.equal(shape.bytes, 2 * dense)
  t.equal(shape.flopsPerToken, 2 * 2 * 8192 * 2048)
  t.equal(shape.format, 'dense/bf16')
})

t.test('roofline: bandwidth-bound at few tokens, compute-bound at many', async (t) => {
  const cost = new CostModel(testCalibration())
  const e = { bytes: 64 * 2 ** 20, flopsPerToken: 2 * 32 * 2 ** 20, format: 'dense/bf16' as FormatKey }
  const t1 = cost.tCpu(e, 1)
  t.equal(cost.tCpu(e, 0), 0)
  t.ok(Math.abs(cost.tCpu(e, 8) - t1) < 1e-12, 'flat below the crossover')
  t.ok(cost.tCpu(e, 512) > 10 * t1, 'grows with tokens above it')
  t.ok(Math.abs(cost.tCpu(e, 2048) / cost.tCpu(e, 1024) - 2) < 0.01, 'linear when compute-bound')
  t.ok(cost.tGpu(e, 1) < t1 / 10, 'GPU reads faster')
  t.ok(Math.abs(cost.tPcie(1e9) - (10e-6 + 1e9 / 25e9)) < 1e-12)
  t.ok(cost.tCpu({ ...e, format: '75%/bf16' }, 1) > 0, 'an uncalibrated format borrows dense rates')
  const noGpu = new CostModel(testCalibration({ gpu: null, pcie: null }))
  t.equal(noGpu.tGpu(e, 1), Infinity)
  t.equal(noGpu.tPcie(1), Infinity)
})

t.test('copies beside a CPU layer job: their own rate, and the job slowed while they run', async (t) => {
  const near = (a: number, b: number, what: string) => t.ok(Math.abs(a - b) < 1e-12, `${what}: ${a} vs ${b}`)
  const old = new CostModel(testCalibration())
  near(old.tPcie(1e9, true), old.tPcie(1e9), 'not measured: the idle rate')
  t.equal(old.cpuBesideUploadS(10e-3, 4e-3), 0, 'not measured: no slowdown')
  const c = new CostModel(testCalibration({ pcie: { bytesPerS: 25e9, latencyS: 10e-6, besideCpu: { bytesPerS: 10e9, cpuSlowdown: 2 } } }))
  near(c.tPcie(1e9), 10e-6 + 1e9 / 25e9, 'idle')
  near(c.tPcie(1e9, true), 10e-6 + 1e9 / 10e9, 'beside')
  // Half speed while copies run: 4 ms of copies cost a 10 ms job 2 ms; copies longer than the slowed
  // job (20 ms) cost it 10 ms, its whole slowed length, and no more.
  near(c.cpuBesideUploadS(10e-3, 4e-3), 2e-3, 'copies shorter than the job')
  near(c.cpuBesideUploadS(10e-3, 30e-3), 10e-3, 'copies longer than the slowed job')
  t.equal(c.cpuBesideUploadS(0, 4e-3), 0, 'no job')
  t.equal(c.cpuBesideUploadS(10e-3, 0), 0, 'no copies')
})

t.test('expected time under Binomial(batch, p) matches brute-force summation', async (t) => {
  const logFact = [0]
  for (let i = 1; i <= 200_000; i++) logFact.push(logFact[i - 1] + Math.log(i))
  const cases: [number, number, number][] = [[1, 0.3, 15], [16, 0.05, 15], [64, 0.2, 15], [300, 0.04, 15], [4096, 0.01, 15], [20, 1, 15], [5000, 0.15, 15],
    // P(N = 0) underflows (e^-722) while P(N < m) is about one half: needs the log-space pmf.
    [100_000, 0.0072, 700]]
  // serial: the share of min(read, arithmetic) added to the max (0: the plain roofline; 1: their sum).
  for (const serial of [0, 0.4, 1])
    for (const [B, p, m] of cases) {
      const r = { fixedS: 3e-6, readS: m * 4e-5, perTokenS: 4e-5, rowS: 3e-7, serial } // crossover at m tokens
      let want = 0
      for (let n = 0; n <= B; n++) {
        const pmf = p === 1 ? (n === B ? 1 : 0) : Math.exp(logFact[B] - logFact[n] - logFact[B - n] + n * Math.log(p) + (B - n) * Math.log1p(-p))
        want += pmf * evalRoofline(r, n)
      }
      const got = expectedRooflineTime(r, B, p)
      t.ok(Math.abs(got - want) <= 1e-8 * want, `serial ${serial}, B ${B}, p ${p}, crossover ${m}: ${got} vs ${want}`)
    }
  const r = { fixedS: 1e-6, readS: 2e-5, perTokenS: 1e-6, rowS: 0, serial: 0.5 }
  t.ok(Math.abs(evalRoofline(r, 10) - 26e-6) < 1e-15, 'below the crossover: the read plus half the arithmetic')
  t.ok(Math.abs(evalRoofline(r, 40) - 51e-6) < 1e-15, 'above it: the arithmetic plus half the read')
  t.equal(expectedRooflineTime({ fixedS: 1, readS: 1, perTokenS: 1, rowS: 1, serial: 0 }, 16, 0), 0)
})

t.test('calibrate recovers the parameters of synthetic probes', async (t) => {
  // A device with known truth: 3 µs fixed per expert on top of 12 µs per layer call (a probe runs a
  // whole layer call, so its fixed time holds both), 80 GB/s, 2 TFLOP/s dense; 2:4 reads 70 GB/s, 3 TFLOP/s.
  const truth: Record<string, { bw: number; flops: number }> = { 'dense/bf16': { bw: 80e9, flops: 2e12 }, '2:4/bf16': { bw: 70e9, flops: 3e12 } }
  let calls = 0
  const probe: Probe = ({ format, bytes, flopsPerToken, tokens }) => {
    calls++
    const { bw, flops } = truth[format]
    const noise = 1 + 0.002 * ((calls * 7) % 5) // repeat-to-repeat jitter; the fit takes the best of repeats
    return (15e-6 + Math.max(bytes / bw, (tokens * flopsPerToken) / flops)) * noise
  }
  // From 32 tokens an expert the GPU runs its large-batch kernel, which streams weights at 1.1 TB/s.
  const gpuProbe: Probe = ({ bytes, flopsPerToken, tokens }) => 5e-6 + Math.max(bytes / (tokens >= 32 ? 1.1e12 : 1.5e12), (tokens * flopsPerToken) / 500e12)
  let seen: { cpu: number; gpu: number | undefined } | undefined
  const besideRuns = [9e9, 30e9, 11e9, 10e9, 12e9].map((bytesPerS, i) => ({ bytesPerS, cpuSlowdown: [1.4, 0.9, 1.5, 1.3, 1.45][i] }))
  const c = await calibrate({
    machine: { cpu: 'synthetic', gpu: 'synthetic gpu' },
    source: 'synthetic',
    cpu: { formats: { 'dense/bf16': probe, '2:4/bf16': probe }, layerOverhead: () => 12e-6 },
    // Kernel-timed GPU probes: their 5 µs intercept is the kernels' own cost a call, on top of the
    // 20 µs measured outside the kernels.
    gpu: { formats: { 'dense/bf16': gpuProbe }, activation: () => ({ bytesPerS: 21e9, freshS: 200e-6, freshRows: 512 }), serial: () => 0.7, kernelTimed: true, layerOverhead: () => 20e-6, expertOverhead: () => 1e-6, asyncCall: () => 150e-6, inlineRows: 256, largeBatchTokens: 32 },
    pcie: (bytes) => 9e-6 + bytes / 24e9,
    // Runs beside CPU jobs: the median is kept; a copy is never faster than idle, nor the job.
    uploadBesideCpu: async () => besideRuns.shift()!,
    // Given both devices' rates, as fitted above.
    layerCalls: async ({ cpu, gpu }) => {
      seen = { cpu: cpu.layerOverheadS, gpu: gpu.asyncCallS }
      return { inline: [[2 ** 21, 300e-6]], offThread: [[2 ** 25, 2e-3]], besideGpuS: 900e-6 }
    },
  })
  const near = (a: number, b: number, tol: number, what: string) => t.ok(Math.abs(a / b - 1) < tol, `${what}: ${a.toPrecision(4)} vs ${b.toPrecision(4)}`)
  t.same(seen, { cpu: 12e-6, gpu: 150e-6 }, 'the layer-call probe gets the fitted rates')
  t.same(c.gpu!.layerCallS, { inline: [[2 ** 21, 300e-6]], offThread: [[2 ** 25, 2e-3]] })
  t.equal(c.cpu.besideGpuS, 900e-6)
  t.match(describeCalibration(c), /layer calls measured whole, by the batch's hidden bytes: 2 MiB 300(\.0)? µs inline; 32 MiB 2000(\.0)? µs off-thread/)
  t.match(describeCalibration(c), /a layer job beside a prefill-size GPU call: \+900(\.0)? µs/)
  near(c.cpu.readBytesPerS['dense/bf16']!, 80e9, 0.01, 'CPU dense GB/s')
  near(c.cpu.readBytesPerS['2:4/bf16']!, 70e9, 0.01, 'CPU 2:4 GB/s')
  // FLOP rates keep the fixed cost in (a lower bound, never a division by noise): within a few %.
  near(c.cpu.flopsPerS['dense/bf16']!, 2e12, 0.05, 'CPU dense FLOP/s')
  near(c.cpu.flopsPerS['2:4/bf16']!, 3e12, 0.05, 'CPU 2:4 FLOP/s')
  t.ok(c.cpu.flopsPerS['dense/bf16']! <= 2e12 * 1.01, 'and never above the truth')
  near(c.cpu.expertOverheadS, 3e-6, 0.5, 'CPU fixed cost')
  t.equal(c.cpu.layerOverheadS, 12e-6)
  near(c.gpu!.readBytesPerS['dense/bf16']!, 1.5e12, 0.01, 'GPU GB/s')
  near(c.gpu!.flopsPerS['dense/bf16']!, 500e12, 0.05, 'GPU FLOP/s')
  t.equal(c.gpu!.activationBytesPerS, 21e9)
  t.same(c.gpu!.freshRows, { rows: 512, seconds: 200e-6 })
  t.equal(c.gpu!.serial, 0.7)
  t.match(describeCalibration(c), /activations 21\.0 GB\/s \(\+200(\.0)? µs a call of 512 rows just written\)/)
  t.match(describeCalibration(c), /reads and arithmetic: 70% of the shorter adds to the longer/)
  // Rows just written cost in proportion up to the measured call's rows, then in full.
  const cm = new CostModel({ ...c, gpu: { ...c.gpu!, layerCallS: undefined } }) // the sum of parts
  const layer = (T: number) => cm.gpuLayerS(T, 2048) - (4 * 2048 * T) / 21e9 // less the rows' bytes at the rate
  near(layer(256) - layer(1), (255 / 512) * 200e-6, 1e-6, 'half the rows, half the cost')
  t.ok(Math.abs(layer(4096) - layer(512)) < 1e-12, 'flat from 512 rows (exactly)')
  near(c.gpu!.layerOverheadS, 25e-6, 0.01, 'GPU layer overhead: outside the kernels + the kernels\' intercept')
  t.equal(c.gpu!.expertOverheadS, 1e-6)
  t.equal(c.cpu.activationBytesPerS, undefined, 'the CPU reads activations in place')
  near(c.pcie!.bytesPerS, 24e9, 0.01, 'PCIe GB/s')
  near(c.pcie!.latencyS, 9e-6, 0.01, 'PCIe latency')
  t.same(c.pcie!.besideCpu, { bytesPerS: 11e9, cpuSlowdown: 1.4 }, 'beside CPU jobs: the medians of 5 runs')
  t.equal(besideRuns.length, 0)
  t.match(describeCalibration(c), /PCIe +24\.0 GB\/s, latency 9\.0 µs; beside a CPU layer job 11\.0 GB\/s, the job 1\.40x as long/)
  t.match(describeCalibration(c), /CPU .*\n.*dense\/bf16 +weights (79\.\d|80\.\d) GB\/s, compute 2\.0 TFLOP\/s/)
  t.match(describeCalibration(c), /PCIe +24\.0 GB\/s/)
  t.match(describeCalibration(c), /GPU .*activations 21\.0 GB\/s/)
  t.equal(c.gpu!.asyncCallS, 150e-6)
  t.equal(c.gpu!.inlineRows, 256)
  t.match(describeCalibration(c), /off-thread call \+150(\.0)? µs \(inline up to 256 rows\)/)
  t.equal(c.gpu!.largeBatch?.minTokens, 32)
  near(c.gpu!.largeBatch!.readBytesPerS['dense/bf16']!, 1.1e12, 0.01, 'GPU GB/s of the large-batch kernel')
  t.match(describeCalibration(c), /GPU [^]*dense\/bf16 +weights 1500\.\d GB\/s \(11\d\d\.\d GB\/s from 32 tokens an expert\)/)
  t.equal(c.cpu.largeBatch, undefined, 'the CPU has one kernel')
})

t.test('GPU calls whose busiest expert reaches the large-batch kernel read at its rate', async (t) => {
  const base = testCalibration()
  const cost = new CostModel({ ...base, gpu: { ...base.gpu!, largeBatch: { minTokens: 32, readBytesPerS: { 'dense/bf16': base.gpu!.readBytesPerS['dense/bf16']! / 2 } } } })
  const plain = new CostModel(base)
  const e: ExpertShape = { bytes: 64 << 20, flopsPerToken: 2 * (32 << 20), format: 'dense/bf16' }
  t.equal(cost.gpuRoofline(e, true).readS, 2 * plain.gpuRoofline(e).readS, 'half the rate: twice the read time')
  t.equal(cost.gpuRoofline(e).readS, plain.gpuRoofline(e).readS, 'the decode kernel keeps the fitted rate')
  t.notOk(cost.gpuLargeBatch(31))
  t.ok(cost.gpuLargeBatch(32))
  t.notOk(plain.gpuLargeBatch(4096), 'without a large-batch rate: never')
  const other: ExpertShape = { ...e, format: '75%/bf16' }
  t.equal(cost.gpuRoofline(other, true).readS, plain.gpuRoofline(other).readS, 'a format it has no rate for keeps its own')
  // A layer of 16 experts, the busiest with an eighth of the tokens: large from 256 tokens (32 of them).
  const experts = Array.from({ length: 16 }, () => e)
  const share = Array.from({ length: 16 }, (_, i) => (i === 0 ? 0.125 : 0.875 / 15))
  const at = (B: number, c: CostModel) => new LayerTimeModel(experts, share, B, c).timeOf(() => true)
  t.equal(at(128, cost), at(128, plain), 'batch 128: its busiest expert expects 16 tokens, the decode kernel')
  t.ok(at(256, cost) > at(256, plain) * 1.3, 'batch 256: 32 tokens, the large-batch kernel reads slower')
})

t.test('a GPU call off the calling thread costs its hand-over: above the inline rows, or beside CPU work', async (t) => {
  const D = 2048
  const base = testCalibration().gpu!
  const bare = new CostModel(testCalibration())
  const cost = new CostModel(testCalibration({ gpu: { ...base, asyncCallS: 200e-6, inlineRows: 256 } }))
  t.equal(cost.gpuLayerS(256, D), bare.gpuLayerS(256, D), 'an inline-sized call pays no hand-over')
  t.ok(Math.abs(cost.gpuLayerS(257, D) - bare.gpuLayerS(257, D) - 200e-6) < 1e-12, 'a larger one does')
  t.equal(bare.gpuAsyncS(), 0, 'older calibrations charge nothing')
  const e: ExpertShape = { bytes: 64 * 2 ** 20, flopsPerToken: 64 * 2 ** 20, format: 'dense/bf16', hiddenSize: D }
  const experts = [e, e, e, e]
  const share = [0.25, 0.25, 0.25, 0.25]
  const withAsync = new LayerTimeModel(experts, share, 16, cost)
  const without = new LayerTimeModel(experts, share, 16, bare)
  const onGpu = (x: number) => x < 2
  const a = withAsync.sides(onGpu), b = without.sides(onGpu)
  t.ok(a.gpuS - b.gpuS > 0.99 * 200e-6 && a.gpuS - b.gpuS <= 200e-6, 'decode beside CPU work: the GPU side pays it (both sides nearly always busy at 16 tokens)')
  t.equal(a.cpuS, b.cpuS, 'the CPU side is unchanged')
  t.equal(withAsync.sides(() => true).gpuS, without.sides(() => true).gpuS, 'all on the GPU at 16 tokens: inline, nothing to pay')
})

t.test('the GPU pays for moving activations: hidden rows in per layer call, output rows back per row', async (t) => {
  const D = 2048
  const e: ExpertShape = { bytes: 64 * 2 ** 20, flopsPerToken: 64 * 2 ** 20, format: 'dense/bf16', hiddenSize: D }
  const bare = new CostModel(testCalibration())
  const act = new CostModel(testCalibration({ gpu: { ...testCalibration().gpu!, activationBytesPerS: 20e9 } }))
  const rowS = (4 * D) / 20e9
  t.ok(Math.abs(act.tGpu(e, 1000) - bare.tGpu(e, 1000) - 1000 * rowS) < 1e-12, 'tGpu adds n rows back')
  t.equal(act.tCpu(e, 1000), bare.tCpu(e, 1000), 'the CPU writes rows in place')
  t.ok(Math.abs(act.gpuLayerS(4096, D) - bare.gpuLayerS(4096, D) - 4096 * rowS) < 1e-12, 'a layer call copies every hidden row in')
  t.equal(bare.gpuLayerS(4096, D), bare.calibration.gpu!.layerOverheadS, 'uncharged without a measured rate')
  t.equal(act.tGpu({ ...e, hiddenSize: undefined }, 1000), bare.tGpu(e, 1000), 'or without the width')
})

t.test('layer calls measured whole replace the sum of parts; a CPU job beside a prefill-size GPU call pays what was measured', async (t) => {
  const D = 2048
  const MiB = 2 ** 20
  const base = testCalibration()
  // Inline up to 256 rows (64 and 256 measured), off-thread above (257, 1024 and 4096).
  const layerCallS = { inline: [[0.5 * MiB, 100e-6], [2 * MiB, 250e-6]], offThread: [[2 * MiB + 8192, 600e-6], [8 * MiB, 900e-6], [32 * MiB, 2100e-6]] } as { inline: [number, number][]; offThread: [number, number][] }
  const cal = { ...base, cpu: { ...base.cpu, besideGpuS: 800e-6 }, gpu: { ...base.gpu!, activationBytesPerS: 20e9, asyncCallS: 200e-6, inlineRows: 256, layerCallS } }
  const cost = new CostModel(cal)
  const near = (a: number, b: number, what: string) => t.ok(Math.abs(a - b) < 1e-12, `${what}: ${a} vs ${b}`)
  near(cost.gpuLayerS(64, D), 100e-6, 'at a measured point: its time')
  near(cost.gpuLayerS(32, D), base.gpu!.layerOverheadS + (100e-6 - base.gpu!.layerOverheadS) / 2, 'below the first: from the layer overhead at no rows')
  near(cost.gpuLayerS(160, D), 175e-6, 'between two points: on the line')
  near(cost.gpuLayerS(257, D), 600e-6, 'one row more than inline: the off-thread table')
  near(cost.gpuLayerS(2560, D), 1500e-6, 'between its points')
  near(cost.gpuLayerS(8192, D), 2100e-6 + 4096 * (1200e-6 / 3072), 'past the last: its last segment extended')
  near(cost.gpuLayerS(2048, 4096), cost.gpuLayerS(4096, 2048), 'by the hidden bytes: twice the width, half the rows')
  t.ok(new CostModel({ ...cal, gpu: { ...cal.gpu, layerCallS: undefined } }).gpuLayerS(4096, D) < 2100e-6 - 1e-4, 'without the table: the sum of parts (less here)')
  // The CPU side pays besideGpuS only beside a GPU call of a prefill-size batch.
  near(cost.cpuBesideGpuS(4096), 800e-6, 'prefill')
  near(cost.cpuBesideGpuS(256), 0, 'an inline-size batch: the calling thread joins, as the CPU probes measured')
  near(new CostModel(base).cpuBesideGpuS(4096), 0, 'older calibrations: nothing')
  const e: ExpertShape = { bytes: 64 * MiB, flopsPerToken: 64 * MiB, format: 'dense/bf16', hiddenSize: D }
  const experts = [e, e, e, e]
  const share = [0.25, 0.25, 0.25, 0.25]
  const plain = new CostModel({ ...cal, cpu: base.cpu })
  const a = new LayerTimeModel(experts, share, 4096, cost).sides((x) => x < 3)
  const b = new LayerTimeModel(experts, share, 4096, plain).sides((x) => x < 3)
  near(a.cpuS - b.cpuS, 800e-6, 'a layer with both sides busy: the CPU side pays it')
  near(a.gpuS, b.gpuS, 'the GPU side does not')
  near(new LayerTimeModel(experts, share, 4096, cost).sides(() => false).cpuS, new LayerTimeModel(experts, share, 4096, plain).sides(() => false).cpuS, 'nor a CPU side alone')
  const counts = [1024, 1024, 1024, 1024]
  const lone = planStreaming(experts, counts, (x) => x < 3, cost, 0, 4096)
  const loneWithout = planStreaming(experts, counts, (x) => x < 3, plain, 0, 4096)
  near(lone.withoutS, Math.max(loneWithout.withoutS, cost.tCpu(e, 1024) + cost.cpuLayerS(experts) + 800e-6), 'streaming weighs the CPU side with it')
})

t.test('a CPU job pays its tail once: one expert alone is slower per byte than several', async (t) => {
  // Truth: 10 µs a layer job, 2 µs an expert, 100 GB/s over the job's bytes, plus the last expert's
  // phase wait: half of one expert's read time, once a job.
  const expertBytes = 64 * 2 ** 20
  const readS = expertBytes / 100e9
  const jobS = (k: number) => 10e-6 + 2e-6 * k + k * readS + 0.5 * readS
  const job: Probe = ({ bytes }) => jobS(Math.max(1, Math.round(bytes / expertBytes)))
  const c = await calibrate({
    machine: { cpu: 'synthetic', gpu: null },
    source: 'synthetic',
    cpu: { formats: { 'dense/bf16': job }, layerOverhead: () => 10e-6, expertOverhead: () => 2e-6, readRateFrom: 'job' },
    plan: { bytes: [1, 2, 4, 8].map((k) => k * expertBytes), tokens: [1], repeats: 1 },
  })
  const near = (a: number, b: number, tol: number, what: string) => t.ok(Math.abs(a / b - 1) < tol, `${what}: ${a.toPrecision(4)} vs ${b.toPrecision(4)}`)
  near(c.cpu.readBytesPerS['dense/bf16']!, 100e9, 1e-6, 'the rate of several experts')
  near(c.cpu.jobTailReads!, 0.5, 1e-6, 'the tail, in expert reads')
  const cost = new CostModel(c)
  const e: ExpertShape = { bytes: expertBytes, flopsPerToken: 1, format: 'dense/bf16' }
  for (const k of [1, 3, 8]) {
    const model = new LayerTimeModel(Array(8).fill(e), Array(8).fill(1), 1, cost)
    const predicted = model.sides((x) => x >= k).cpuS
    near(predicted, jobS(k), 1e-6, `a job of ${k} expert${k > 1 ? 's' : ''}`)
  }
  t.equal(new CostModel(testCalibration()).cpuLayerS([e]), testCalibration().cpu.layerOverheadS, 'older calibrations: no tail')
  t.match(describeCalibration(c), /per-layer 10(\.0)? µs \+ 0\.50 expert reads/)
})

t.test("a CPU job's arithmetic runs at the job rate, its last expert's at one expert's", async (t) => {
  // Truth: 1 TFLOP/s for one expert alone, 2 for the others of a job (their phases overlap), reads at
  // 100 GB/s with the tail of half an expert's read; an expert has as many FLOPs a token as bytes.
  const expertBytes = 64 * 2 ** 20
  const readS = expertBytes / 100e9
  const f = expertBytes
  const jobS = (k: number, n: number) => 10e-6 + 2e-6 * k + Math.max((k + 0.5) * readS, ((k - 1) * n * f) / 2e12 + (n * f) / 1e12)
  const spreads: { tokens: number; spread: readonly number[] }[] = []
  const job: Probe = ({ bytes, tokens, spread }) => {
    if (spread) spreads.push({ tokens, spread })
    return jobS(Math.max(1, Math.round(bytes / expertBytes)), tokens)
  }
  const c = await calibrate({
    machine: { cpu: 'synthetic', gpu: null },
    source: 'synthetic',
    cpu: { formats: { 'dense/bf16': job }, layerOverhead: () => 10e-6, expertOverhead: () => 2e-6, readRateFrom: 'job' },
    plan: { bytes: [1, 2, 4, 8].map((k) => k * expertBytes), tokens: [1, 16, 64, 256], repeats: 1 },
  })
  // The job is shaped like a hybrid layer's (JOB_SPREAD), its busiest expert at the plan's most tokens.
  t.equal(spreads.length, 1, 'one job of several experts measured')
  t.same(spreads[0].spread, JOB_SPREAD)
  const busiest = (spreads[0].tokens * JOB_SPREAD.length * Math.max(...JOB_SPREAD)) / JOB_SPREAD.reduce((x, y) => x + y, 0)
  t.ok(Math.abs(busiest - 256) < 2, `its busiest expert gets ~256 tokens (${busiest.toFixed(1)})`)
  const near = (a: number, b: number, tol: number, what: string) => t.ok(Math.abs(a / b - 1) < tol, `${what}: ${a.toPrecision(4)} vs ${b.toPrecision(4)}`)
  near(c.cpu.flopsPerS['dense/bf16']!, 1e12, 0.01, 'one expert alone')
  near(c.cpu.jobFlopsPerS!['dense/bf16']!, 2e12, 0.01, 'the others of a job')
  t.match(describeCalibration(c), /compute 99\d\.\d GFLOP\/s \(2\.0 TFLOP\/s in a job of several experts\)/)
  const cost = new CostModel(c)
  const e: ExpertShape = { bytes: expertBytes, flopsPerToken: f, format: 'dense/bf16' }
  near(cost.tCpu(e, 256) + cost.cpuLayerS([e], 256), jobS(1, 256), 0.03, 'one expert of 256 tokens: as if alone')
  // 2048 tokens over 8 experts: 256 each expected; k of them on the CPU.
  for (const k of [1, 3, 8]) {
    const model = new LayerTimeModel(Array(8).fill(e), Array(8).fill(1 / 8), 2048, cost)
    near(model.sides((x) => x >= k).cpuS, jobS(k, 256), 0.03, `a job of ${k} expert${k > 1 ? 's' : ''} of ~256 tokens`)
  }
  // planStreaming charges the same, from the batch's counts.
  const counts = Int32Array.from({ length: 8 }, (_, x) => (x < 3 ? 256 : 0))
  near(planStreaming(Array(8).fill(e), counts, () => false, cost, 0, 768).withoutS, jobS(3, 256), 0.03, 'planStreaming: a job of 3 experts')
  t.equal(new CostModel(testCalibration()).cpuJobTailS(e, 256), 0, 'older calibrations: one rate, no tail')
})

t.test('fitLine clamps a negative intercept', async (t) => {
  const f = fitLine([[1, 0.5], [2, 2], [3, 3.5]])
  t.equal(f.intercept, 0)
  t.ok(f.slope > 0)
})

t.test('default probes measure this machine; the calibration is cached per machine and refreshable', async (t) => {
  const dir = tempDir()
  const env = { HETMOE_CACHE_DIR: dir }
  const probes = defaultProbes({ cpu: 'cpu under test', gpu: null })
  const path = calibrationCachePath(probes.machine, env)
  t.equal(join(dir, path.slice(dir.length + 1)), path)
  t.match(path, /calibration-[0-9a-f]{16}\.json$/)
  t.not(path, calibrationCachePath({ cpu: 'cpu under test', gpu: 'some gpu' }, env), 'the GPU is part of the key')
  const start = performance.now()
  const a = await loadCalibration(probes, { env })
  t.comment(`default probes took ${(performance.now() - start).toFixed(0)} ms: ${describeCalibration(a).split('\n')[2]?.trim()}`)
  t.ok(existsSync(path))
  t.ok(a.cpu.readBytesPerS['dense/fp32']! > 1e8, 'a plausible read bandwidth')
  t.ok(a.cpu.flopsPerS['dense/fp32']! > 1e7)
  t.equal(a.gpu, null)
  t.equal(a.pcie, null)
  const b = await loadCalibration(probes, { env })
  t.equal(b.measuredAt, a.measuredAt, 'second load comes from the cache')
  await new Promise((r) => setTimeout(r, 5))
  const c = await loadCalibration(probes, { env, refresh: true })
  t.not(c.measuredAt, a.measuredAt, 'refresh measures again')
  t.equal(JSON.parse(readFileSync(path, 'utf8')).measuredAt, c.measuredAt)
})

t.test("the driver's GPU name (no CUDA start-up) only where it must be CUDA's device 0", async (t) => {
  const root = tempDir()
  const gpu = (bus: string, model: string) => {
    mkdirSync(join(root, bus))
    writeFileSync(join(root, bus, 'information'), `Model: \t\t ${model}\nIRQ:   \t\t 42\nGPU UUID: \t GPU-0\n`)
  }
  t.equal(driverGpuName(join(root, 'absent'), {}), undefined, 'no NVIDIA driver')
  t.equal(driverGpuName(root, {}), undefined, 'no GPU listed')
  gpu('0000:19:00.0', 'NVIDIA H200')
  t.equal(driverGpuName(root, {}), 'NVIDIA H200')
  gpu('0000:3b:00.0', 'NVIDIA H200')
  t.equal(driverGpuName(root, {}), 'NVIDIA H200', 'several of one model')
  t.equal(driverGpuName(root, { CUDA_VISIBLE_DEVICES: '1' }), undefined, 'CUDA_VISIBLE_DEVICES may pick another')
  gpu('0000:5d:00.0', 'NVIDIA L4')
  t.equal(driverGpuName(root, {}), undefined, 'mixed models: which one CUDA calls 0 is not known here')
})
