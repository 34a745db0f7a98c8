import t from 'tap'
import type { Test } from 'tap'
import { spawnSync } from 'node:child_process'
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { HetmoeError } from '../runtime/errors.js'
import { prune, relativeError, roundToBf16 } from '../experts/formats.js'
import { importCheckpoint } from '../experts/import.js'
import type { WeightDtype, WeightFormat } from '../experts/manifest.js'
import { loadModel, type Model } from '../experts/model.js'
import { expertForwardRef, gateRoutes, layerForwardRef } from '../experts/reference.js'
import { partials, tempDir } from './helpers/models.js'
import { safetensorsBytes, testRng, writeCheckpoint, type CheckpointSpec, type CheckpointWeights } from './helpers/safetensors-writer.js'

const cli = fileURLToPath(new URL('../runtime/cli/main.js', import.meta.url))
const MIXTRAL: CheckpointSpec = { arch: 'mixtral', hidden: 64, inner: 96, experts: 4, topK: 2, layers: 2, dtype: 'F32', shards: 3, seed: 4 }

/** What the store must hold for a source matrix after the format's pruning and the dtype's rounding. */
function expected(w: Float32Array, rows: number, cols: number, format: WeightFormat, dtype: WeightDtype): Float32Array {
  const p = format === 'dense' ? w : prune(w, rows, cols, format).pruned
  return dtype === 'bf16' ? roundToBf16(p) : p
}

function denseFrom(weights: CheckpointWeights, name: (m: 'gate' | 'up' | 'down') => string, format: WeightFormat, dtype: WeightDtype) {
  const g = weights.get(name('gate'))!
  const u = weights.get(name('up'))!
  const d = weights.get(name('down'))!
  return {
    orig: { ffn: 'swiglu' as const, hidden: g.cols, inner: g.rows, gate: g.data, up: u.data, down: d.data },
    stored: {
      ffn: 'swiglu' as const,
      hidden: g.cols,
      inner: g.rows,
      gate: expected(g.data, g.rows, g.cols, format, dtype),
      up: expected(u.data, u.rows, u.cols, format, dtype),
      down: expected(d.data, d.rows, d.cols, format, dtype),
    },
  }
}

function maxRelDiff(a: Float64Array, b: Float64Array): number {
  let num = 0
  let den = 0
  for (let i = 0; i < a.length; i++) {
    num = Math.max(num, Math.abs(a[i] - b[i]))
    den = Math.max(den, Math.abs(b[i]))
  }
  return num / den
}

t.test('Mixtral (sharded, F32): every format matches the float64 reference of the original weights', async (t) => {
  const dir = tempDir(t)
  const src = join(dir, 'ckpt')
  const { weights, names } = writeCheckpoint(src, MIXTRAL)
  const r = testRng(77)
  const x = Float32Array.from({ length: 6 * 64 }, () => r.normal())
  for (const [format, dtype] of [['dense', 'bf16'], ['dense', 'fp32'], ['2:4', 'bf16'], ['75%', 'fp32'], ['75%', 'bf16']] as const) {
    const out = join(dir, `m-${format.replace(/\W/g, '_')}-${dtype}`)
    const manifest = await importCheckpoint(src, { out, format, dtype })
    t.match(manifest, { origin: 'mixtral', hiddenSize: 64, ffnSize: 96, ffn: 'swiglu', dtype })
    const m = await loadModel(out)
    t.equal(m.layers.length, 2)
    for (const [li, l] of m.layers.entries()) {
      t.match(l.routing, { kind: 'gate', topK: 2, normalize: true }, 'Mixtral renormalises its top-2')
      t.same(Array.from(m.gateWeight(li)), Array.from(weights.get(names.gate(li))!.data), 'gate weight kept in fp32')
      for (let e = 0; e < 4; e++) {
        const { orig, stored } = denseFrom(weights, (w) => names.expert(li, e, w), format, dtype)
        // w1 = gate, w3 = up, w2 = down
        t.same(Array.from(m.denseMatrix(m.matrix(li, e, 'up'))), Array.from(stored.up), `L${li} E${e}: up is w3`)
        const y = expertForwardRef(m, li, e, x)
        const ref = expertForwardRef(stored, x)
        const err = maxRelDiff(y, ref)
        t.ok(err <= 1e-12, `L${li} E${e} ${format} ${dtype}: store vs reference of the pruned/rounded originals: ${err.toExponential(1)}`)
        const vsOrig = relativeError(expertForwardRef(orig, x), y)
        const bound = format === 'dense' ? (dtype === 'bf16' ? 0.02 : 1e-7) : format === '2:4' ? 0.9 : 1.2
        t.ok(vsOrig <= bound, `…and vs the unpruned original: relative error ${vsOrig.toFixed(4)}`)
        if (format !== 'dense') {
          const pe = m.matrix(li, e, 'gate').pruneError!
          t.ok(Math.abs(pe - prune(orig.gate, 96, 64, format).error) < 1e-12, 'pruneError recorded')
        }
      }
    }
    // The whole layer: gate routing from the stored gate equals routing from the checkpoint's.
    const { routes } = layerForwardRef(m, 1, { x })
    const ind = gateRoutes(weights.get(names.gate(1))!.data, 4, x, 64, 2, true)
    t.same(Array.from(routes.experts), Array.from(ind.experts))
    m.close()
  }
  t.same(partials(dir), [])
})

t.test('F16 and F32 sources, single file', async (t) => {
  const dir = tempDir(t)
  for (const dtype of ['F16', 'F32'] as const) {
    const src = join(dir, `ck-${dtype}`)
    const { weights, names } = writeCheckpoint(src, { ...MIXTRAL, layers: 1, shards: 1, dtype, seed: 8 })
    const out = join(dir, `m-${dtype}`)
    await importCheckpoint(src, { out, dtype: 'fp32' })
    const m = await loadModel(out)
    for (let e = 0; e < 4; e++) t.same(Array.from(m.denseMatrix(m.matrix(0, e, 'down'))), Array.from(weights.get(names.expert(0, e, 'down'))!.data), `${dtype} E${e}: exact in fp32`)
    m.close()
  }
})

t.test('BF16 → dense bf16 and F32 → dense fp32 pass the bytes through; NaN is still caught', async (t) => {
  const dir = tempDir(t)
  for (const [src, dst] of [['BF16', 'bf16'], ['F32', 'fp32']] as const) {
    const ck = join(dir, `ck-${src}`)
    const { weights, names } = writeCheckpoint(ck, { ...MIXTRAL, layers: 1, shards: 1, dtype: src, seed: 3 })
    await importCheckpoint(ck, { out: join(dir, `m-${src}`), dtype: dst })
    const m = await loadModel(join(dir, `m-${src}`))
    for (let e = 0; e < 4; e++) t.same(Array.from(m.denseMatrix(m.matrix(0, e, 'gate'))), Array.from(weights.get(names.expert(0, e, 'gate'))!.data), `${src} E${e}`)
    m.close()
    const file = join(ck, 'model.safetensors')
    const buf = readFileSync(file)
    const n = Number(buf.readBigUInt64LE(0))
    const h = JSON.parse(buf.subarray(8, 8 + n).toString())
    const name = names.expert(0, 1, 'down')
    const el = src === 'BF16' ? 2 : 4
    const at = 8 + n + h[name].data_offsets[0] + el * (2 * 96 + 5)
    if (src === 'BF16') buf.writeUInt16LE(0xff80, at) // -Inf
    else buf.writeUInt32LE(0x7fc00000, at) // NaN
    writeFileSync(file, buf)
    await t.rejects(importCheckpoint(ck, { out: join(dir, `m2-${src}`), dtype: dst }), { code: 'BAD_MODEL', message: /experts\.1\.w2\.weight" holds a non-finite value at \[2, 5\]/ })
    t.notOk(existsSync(join(dir, `m2-${src}`)))
  }
})

t.test('checkpoints already in the pattern are compressed without loss', async (t) => {
  const dir = tempDir(t)
  for (const format of ['2:4', '75%'] as const) {
    const src = join(dir, `ck-${format.replace(/\W/g, '_')}`)
    const { weights, names } = writeCheckpoint(src, { ...MIXTRAL, layers: 1, shards: 1, dtype: 'F32', prePrune: (w, r, c) => prune(w, r, c, format).pruned })
    const out = join(dir, `m-${format.replace(/\W/g, '_')}`)
    const manifest = await importCheckpoint(src, { out, format, dtype: 'fp32' })
    t.equal(manifest.provenance.matricesAlreadyInPattern, 12)
    t.equal(manifest.provenance.matricesPruned, 0)
    const m = await loadModel(out)
    for (let e = 0; e < 4; e++) {
      t.equal(m.matrix(0, e, 'gate').pruneError, 0)
      t.same(Array.from(m.denseMatrix(m.matrix(0, e, 'gate'))), Array.from(weights.get(names.expert(0, e, 'gate'))!.data), `${format} E${e}: lossless`)
    }
    m.close()
  }
})

t.test('Qwen2-MoE (shared expert + its sigmoid gate), OLMoE, DeepSeek-MoE (dense first layer, merged shared experts)', async (t) => {
  const dir = tempDir(t)
  const r = testRng(12)
  const x = Float32Array.from({ length: 3 * 32 }, () => r.normal())
  {
    const src = join(dir, 'qwen')
    const { weights, names } = writeCheckpoint(src, { arch: 'qwen2_moe', hidden: 32, inner: 16, experts: 6, topK: 4, layers: 2, shared: 48, dtype: 'BF16' })
    await importCheckpoint(src, { out: join(dir, 'qwen-m'), dtype: 'fp32' })
    const m = await loadModel(join(dir, 'qwen-m'))
    t.match(m.layers[1], { index: 1, routing: { kind: 'gate', topK: 4, normalize: false }, sharedExperts: [{ up: { rows: 48, cols: 32 } }] })
    t.ok(m.layers[1].sharedExpertGate)
    t.same(Array.from(m.denseMatrix(m.layers[1].sharedExperts[0].down)), Array.from(weights.get(names.shared!(1, 'down'))!.data))
    // The layer's output = routed (softmax top-4, not renormalised) + sigmoid(g·x) · shared.
    const { out } = layerForwardRef(m, 1, { x })
    const sh = denseFrom(weights, (w) => names.shared!(1, w), 'dense', 'fp32').orig
    const gateVec = weights.get(names.sharedGate(1))!.data
    const routes = gateRoutes(weights.get(names.gate(1))!.data, 6, x, 32, 4, false)
    for (let tok = 0; tok < 3; tok++) {
      const xt = x.subarray(tok * 32, tok * 32 + 32)
      const want = new Float64Array(32)
      for (let j = 0; j < 4; j++) {
        const e = routes.experts[tok * 4 + j]
        expertForwardRef(denseFrom(weights, (w) => names.expert(1, e, w), 'dense', 'fp32').orig, xt).forEach((v, i) => (want[i] += routes.weights[tok * 4 + j] * v))
      }
      const s = 1 / (1 + Math.exp(-gateVec.reduce((a, w, i) => a + w * xt[i], 0)))
      expertForwardRef(sh, xt).forEach((v, i) => (want[i] += s * v))
      t.ok(maxRelDiff(out.subarray(tok * 32, tok * 32 + 32), want) < 1e-12, `qwen2_moe token ${tok}`)
    }
    m.close()
  }
  {
    const src = join(dir, 'olmoe')
    writeCheckpoint(src, { arch: 'olmoe', hidden: 32, inner: 16, experts: 8, topK: 2, layers: 1, normTopkProb: true })
    const manifest = await importCheckpoint(src, { out: join(dir, 'olmoe-m'), format: '2:4' })
    t.match(manifest.layers[0], { routing: { topK: 2, normalize: true }, sharedExperts: [] })
    t.equal(manifest.origin, 'olmoe')
    // Qwen3-MoE names its tensors as OLMoE does; its config calls F moe_intermediate_size.
    const c = JSON.parse(readFileSync(join(src, 'config.json'), 'utf8'))
    writeFileSync(join(src, 'config.json'), JSON.stringify({ ...c, model_type: 'qwen3_moe', moe_intermediate_size: 16, intermediate_size: 64 }))
    const q3 = await importCheckpoint(src, { out: join(dir, 'qwen3-m') })
    t.match(q3, { origin: 'qwen3_moe', ffnSize: 16, layers: [{ routing: { topK: 2, normalize: true } }] })
  }
  {
    const src = join(dir, 'ds')
    const { weights, names } = writeCheckpoint(src, { arch: 'deepseek', hidden: 32, inner: 16, experts: 4, topK: 2, layers: 3, shared: 2, firstDense: 1 })
    const manifest = await importCheckpoint(src, { out: join(dir, 'ds-m'), dtype: 'fp32' })
    t.same(manifest.layers.map((l) => l.index), [1, 2], 'layer 0 is dense: skipped; indices kept')
    t.match(manifest.layers[0].sharedExperts, [{ gate: { rows: 32 }, down: { cols: 32 } }], 'two shared experts of 16 merged into one of 32')
    const m = await loadModel(join(dir, 'ds-m'))
    t.same(Array.from(m.denseMatrix(m.layers[1].sharedExperts[0].up)), Array.from(weights.get(names.shared!(2, 'up'))!.data))
    t.notOk(m.layers[1].sharedExpertGate)
    m.close()
  }
})

/** Checks that an import fails cleanly: a HetmoeError matching `message`, nothing at `out`. */
async function failsCleanly(t: Test, src: string, out: string, message: RegExp, code = 'BAD_MODEL') {
  const err = await importCheckpoint(src, { out }).then(
    () => undefined,
    (e: unknown) => e,
  )
  t.ok(err instanceof HetmoeError, `a HetmoeError (${String(err)})`)
  t.match(err, { code, message }, message.source)
  t.notOk(existsSync(out), 'nothing at --out')
  t.same(partials(join(out, '..')), [], 'no temp directory left')
}

t.test('malformed checkpoints end with errors naming the file and the tensor', async (t) => {
  const dir = tempDir(t)
  const out = join(dir, 'out')
  const fresh = (name: string, spec: Partial<CheckpointSpec> = {}) => {
    const src = join(dir, name)
    writeCheckpoint(src, { ...MIXTRAL, layers: 1, shards: 1, dtype: 'F32', ...spec })
    return src
  }
  const file = (src: string) => join(src, 'model.safetensors')
  const cfg = (src: string, edit: (c: any) => void) => {
    const c = JSON.parse(readFileSync(join(src, 'config.json'), 'utf8'))
    edit(c)
    writeFileSync(join(src, 'config.json'), JSON.stringify(c))
  }
  /** Rewrites the header of model.safetensors through `edit`, keeping the data. */
  const header = (src: string, edit: (h: any) => void, lengthDelta = 0) => {
    const buf = readFileSync(file(src))
    const n = Number(buf.readBigUInt64LE(0))
    const h = JSON.parse(buf.subarray(8, 8 + n).toString())
    edit(h)
    const hb = Buffer.from(JSON.stringify(h))
    const len = Buffer.alloc(8)
    len.writeBigUInt64LE(BigInt(hb.length + lengthDelta))
    writeFileSync(file(src), Buffer.concat([len, hb, buf.subarray(8 + n)]))
  }
  const w1 = 'model.layers.0.block_sparse_moe.experts.2.w1.weight'

  let src = fresh('a')
  writeFileSync(file(src), Buffer.concat([Buffer.from([0xff, 0xff, 0, 0, 0, 0, 0, 0]), Buffer.from('{}')]))
  await failsCleanly(t, src, out, /model\.safetensors: header length 65535 runs past the end of the 10-byte file/)

  src = fresh('b')
  header(src, () => undefined, -3)
  await failsCleanly(t, src, out, /model\.safetensors: the header is not JSON/)

  src = fresh('c')
  header(src, (h) => (h[w1].data_offsets[1] += 10 ** 9))
  await failsCleanly(t, src, out, new RegExp(`model\\.safetensors: tensor "${w1.replace(/\./g, '\\.')}": data_offsets .* are outside`))

  src = fresh('d')
  header(src, (h) => (h[w1].shape = [96, 63]))
  await failsCleanly(t, src, out, /tensor "model\.layers\.0\.block_sparse_moe\.experts\.2\.w1\.weight": data_offsets \[\d+, \d+\] hold 24576 bytes, shape \[96,63\] × F32 needs 24192/)

  src = fresh('e')
  header(src, (h) => (h[w1].dtype = 'F12'))
  await failsCleanly(t, src, out, /experts\.2\.w1\.weight": unknown dtype "F12"/)

  src = fresh('f')
  header(src, (h) => {
    const other = h['model.layers.0.block_sparse_moe.experts.2.w3.weight']
    h[w1].data_offsets = [other.data_offsets[0] + 4, other.data_offsets[1] + 4]
  })
  await failsCleanly(t, src, out, /overlaps tensor/)

  src = fresh('g')
  header(src, (h) => {
    h[w1].dtype = 'I32'
  })
  await failsCleanly(t, src, out, /experts\.2\.w1\.weight": dtype I32 is not a float type/)

  src = fresh('h', { shards: 2 })
  rmSync(join(src, 'model-00002-of-00002.safetensors'))
  await failsCleanly(t, src, out, /model\.safetensors\.index\.json: shard model-00002-of-00002\.safetensors \(holding tensor ".*"\) is missing/)

  src = fresh('i')
  cfg(src, (c) => (c.num_local_experts = 5))
  await failsCleanly(t, src, out, /tensor "model\.layers\.0\.block_sparse_moe\.gate\.weight" has shape \[4,64\], config\.json implies \[5,64\]/)

  src = fresh('j')
  header(src, (h) => {
    delete h['model.layers.0.block_sparse_moe.experts.3.w2.weight']
  })
  await failsCleanly(t, src, out, /tensor "model\.layers\.0\.block_sparse_moe\.experts\.3\.w2\.weight" is missing/)

  src = fresh('k')
  cfg(src, (c) => (c.intermediate_size = 80))
  await failsCleanly(t, src, out, /experts\.0\.w1\.weight" has shape \[96,64\], config\.json implies \[80,64\]/)

  src = fresh('l')
  cfg(src, (c) => (c.num_local_experts = 3))
  await failsCleanly(t, src, out, /experts\.3\.w\d\.weight": config\.json says 3 experts per layer|gate\.weight" has shape/)

  src = fresh('m')
  cfg(src, (c) => (c.model_type = 'llama'))
  await failsCleanly(t, src, out, /config\.json: model_type "llama" is not an MoE architecture/, 'UNSUPPORTED')

  src = fresh('n')
  writeFileSync(join(src, 'config.json'), '{"model_type": "mixtral",')
  await failsCleanly(t, src, out, /config\.json: not JSON/)

  src = fresh('o')
  {
    const buf = readFileSync(file(src))
    const n = Number(buf.readBigUInt64LE(0))
    const h = JSON.parse(buf.subarray(8, 8 + n).toString())
    buf.writeUInt32LE(0x7fc00000, 8 + n + h[w1].data_offsets[0] + 4 * 70) // a NaN in w1
    writeFileSync(file(src), buf)
  }
  await failsCleanly(t, src, out, /experts\.2\.w1\.weight" holds a non-finite value at \[1, 6\]/)

  src = fresh('p')
  cfg(src, (c) => (c.num_experts_per_tok = 9))
  await failsCleanly(t, src, out, /config\.json: num_experts_per_tok: 9 is more than the 4 experts/)

  const empty = join(dir, 'empty')
  writeCheckpoint(empty, { ...MIXTRAL, layers: 1, shards: 1 })
  rmSync(join(empty, 'model.safetensors'))
  await failsCleanly(t, empty, out, /empty: no \.safetensors file/)
})

t.test('the CLI: progress, summary, and exit 1 with nothing written on bad input', async (t) => {
  const dir = tempDir(t)
  const src = join(dir, 'ck')
  writeCheckpoint(src, { ...MIXTRAL, layers: 1, shards: 2 })
  const run = (...args: string[]) => spawnSync(process.execPath, [cli, 'import', ...args], { encoding: 'utf8', env: { ...process.env, CI: 'true' } })
  const ok = run(src, '--out', join(dir, 'm'), '--format', '2:4', '--json')
  t.equal(ok.status, 0, ok.stderr)
  t.match(ok.stderr, /import: 100% \(12\/12\)/)
  const s = JSON.parse(ok.stdout)
  t.match(s, { layers: 1, expertsPerLayer: 4 })
  t.ok(s.meanPruneError > 0.2 && s.maxPruneError < 0.9)
  writeFileSync(join(src, 'model-00001-of-00002.safetensors'), 'garbage')
  const bad = run(src, '--out', join(dir, 'm2'))
  t.equal(bad.status, 1)
  t.match(bad.stderr, /hetmoe import: .*model-00001-of-00002\.safetensors: 7 bytes is too short/)
  t.notOk(existsSync(join(dir, 'm2')))
  t.equal(run('--out', join(dir, 'm3')).status, 2, 'no checkpoint: usage error')
})
