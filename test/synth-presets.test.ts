import t from 'tap'
import { spawnSync } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { prune, roundToBf16, toBf16Array } from '../experts/formats.js'
import { WEIGHTS_FILE } from '../experts/manifest.js'
import { loadModel } from '../experts/model.js'
import { makeRreTable } from '../experts/rre-table.js'
import { matrixSeed, PRESETS, synthMatrix, synthMatrixBf16, synthModel } from '../experts/synth.js'
import { makeModel, MICRO, MICRO_GELU, partials, tempDir } from './helpers/models.js'

const cli = fileURLToPath(new URL('../runtime/cli/main.js', import.meta.url))

t.test('presets have the shapes of DESIGN.md', async (t) => {
  t.match(PRESETS.tiny, { layers: 2, hidden: 64, inner: 128, ffn: 'swiglu', routing: { kind: 'rre', domains: 2, expertsPerDomain: 4 }, vocabSize: 32000 })
  t.match(PRESETS.small, { layers: 4, hidden: 1024, inner: 2816, ffn: 'swiglu', routing: { kind: 'rre', domains: 4, expertsPerDomain: 8 } })
  t.match(PRESETS['sigma-lite'], { layers: 4, hidden: 2048, inner: 8192, ffn: 'gelu', routing: { kind: 'rre', domains: 4, expertsPerDomain: 16 } })
  t.match(PRESETS.mixtral, { layers: 1, hidden: 4096, inner: 14336, ffn: 'swiglu', routing: { kind: 'gate', experts: 8, topK: 2 } })
  t.match(PRESETS.fine, { layers: 1, hidden: 2048, inner: 1408, ffn: 'swiglu', routing: { kind: 'gate', experts: 64, topK: 6 } })
})

t.test('tiny: layout, RRE tables, deterministic weights', async (t) => {
  const dir = tempDir(t)
  const a = await makeModel(dir, 'tiny', { seed: 5, name: 'a' })
  const b = await makeModel(dir, 'tiny', { seed: 5, name: 'b' })
  const c = await makeModel(dir, 'tiny', { seed: 6, name: 'c' })
  const wa = readFileSync(join(a, WEIGHTS_FILE))
  t.ok(wa.equals(readFileSync(join(b, WEIGHTS_FILE))), 'same seed: byte-identical weights')
  t.notOk(wa.equals(readFileSync(join(c, WEIGHTS_FILE))), 'another seed: other weights')
  const m = await loadModel(a)
  t.match(m.manifest, { origin: 'tiny', hiddenSize: 64, ffnSize: 128, ffn: 'swiglu', dtype: 'bf16', vocabSize: 32000, provenance: { seed: 5, preset: 'tiny' } })
  t.equal(m.layers.length, 2)
  for (const [li, l] of m.layers.entries()) {
    t.equal(l.experts.length, 8)
    if (l.routing.kind !== 'rre') throw new Error('expected RRE')
    t.same(l.routing.domains, [{ name: 'general', firstExpert: 0, numExperts: 4 }, { name: 'code', firstExpert: 4, numExperts: 4 }])
    t.same(m.rreTable(li), makeRreTable(l.routing.seed, [4, 4], 32000), `layer ${li}: the table is makeRreTable(seed)`)
  }
  t.not((m.layers[0].routing as { seed: number }).seed, (m.layers[1].routing as { seed: number }).seed, 'each layer draws its own table')
  // The stored weights are exactly the documented generator's, rounded to bf16.
  const ref = m.matrix(1, 6, 'down')
  t.same(Array.from(m.denseMatrix(ref)), Array.from(roundToBf16(synthMatrix(matrixSeed(5, 1, 6, 'down'), 64, 128))))
  m.close()
})

t.test('tiny seed 0 is pinned by the hash of its weights (PRNG, Box–Muller, layout, pruning)', async (t) => {
  const { createHash } = await import('node:crypto')
  const dir = tempDir(t)
  const golden = {
    dense: '7f0d62cfbcfcfa4d17a372c5e00ba85d64ff7ac884734d18b3aace1713445d34',
    '2:4': '84800fbbf5b93a11a67892ab66ef6bc3e781775e98e24471b98154a2721265fd',
  }
  for (const format of ['dense', '2:4'] as const) {
    const path = await makeModel(dir, 'tiny', { format })
    t.equal(createHash('sha256').update(readFileSync(join(path, WEIGHTS_FILE))).digest('hex'), golden[format], format)
  }
})

t.test('weight statistics: N(0, 1/in) with a few outlier input channels', async (t) => {
  const rows = 256
  const cols = 1024
  const w = synthMatrix(123, rows, cols)
  const colRms = Array.from({ length: cols }, (_, c) => {
    let s = 0
    for (let r = 0; r < rows; r++) s += w[r * cols + c] ** 2
    return Math.sqrt(s / rows)
  })
  const outliers = colRms.filter((v) => v > 3 / Math.sqrt(cols)).length
  t.ok(outliers >= 1 && outliers <= 8, `${outliers} outlier channels`)
  const normal = colRms.filter((v) => v <= 3 / Math.sqrt(cols))
  const rms = Math.sqrt(normal.reduce((s, v) => s + v * v, 0) / normal.length)
  t.ok(Math.abs(rms * Math.sqrt(cols) - 1) < 0.03, `rms·√in = ${(rms * Math.sqrt(cols)).toFixed(3)}`)
  let mean = 0
  for (const v of w) mean += v
  t.ok(Math.abs(mean / w.length) < 0.002, 'mean ~ 0')
  t.equal(new Set(w).size > 30000, true, 'many distinct values')
})

t.test('the bf16 fast path equals rounding the fp32 generator', async (t) => {
  for (const [rows, cols] of [[3, 64], [17, 130], [5, 7], [64, 1408]]) {
    const s = 1000 + rows
    t.same(Array.from(synthMatrixBf16(s, rows, cols)), Array.from(toBf16Array(synthMatrix(s, rows, cols))), `${rows}×${cols}`)
  }
})

t.test('sparse formats: pruned from the dense weights, with the prune error recorded', async (t) => {
  const dir = tempDir(t)
  for (const [format, dtype] of [['2:4', 'bf16'], ['75%', 'fp32']] as const) {
    const m = await loadModel(await makeModel(dir, MICRO, { format, dtype, seed: 2 }))
    const ref = m.matrix(0, 2, 'gate')
    t.match(ref, { format, dtype, rows: 48, cols: 32 })
    const p = prune(synthMatrix(matrixSeed(2, 0, 2, 'gate'), 48, 32), 48, 32, format)
    t.equal(ref.pruneError, p.error)
    t.ok(p.error > 0.2 && p.error < 0.9, `${format}: prune error ${p.error.toFixed(3)}`)
    t.same(Array.from(m.denseMatrix(ref)), Array.from(dtype === 'bf16' ? roundToBf16(p.pruned) : p.pruned), 'stored = pruned weights')
    m.close()
  }
  const g = await loadModel(await makeModel(dir, MICRO_GELU))
  t.equal(g.expert(0, 0).gate, undefined, 'GeLU experts have no gate')
  g.close()
  await t.rejects(synthModel({ preset: { ...MICRO, hidden: 40 }, out: join(dir, 'x'), format: '2:4' }), { code: 'BAD_OPTION' })
  t.same(partials(dir), [])
})

t.test('the CLI: progress on stderr, JSON on stdout, exit codes', async (t) => {
  const dir = tempDir(t)
  const out = join(dir, 'tiny')
  const run = (...args: string[]) => spawnSync(process.execPath, [cli, 'synth', ...args], { encoding: 'utf8', env: { ...process.env, CI: 'true' } })
  const ok = run('--preset', 'tiny', '--out', out, '--seed', '5', '--json')
  t.equal(ok.status, 0, ok.stderr)
  t.match(ok.stderr, /synth tiny: 100% \(16\/16\)/)
  t.match(JSON.parse(ok.stdout), { name: 'tiny-bf16-s5', weightsBytes: Number })
  const again = run('--preset', 'tiny', '--out', out)
  t.equal(again.status, 1)
  t.match(again.stderr, /already exists/)
  t.equal(run('--preset', 'huge', '--out', join(dir, 'h')).status, 2)
  t.equal(run('--preset', 'tiny', '--out', join(dir, 'f'), '--format', '3:4').status, 2)
  t.notOk(existsSync(join(dir, 'h')))
  t.equal(run('--preset', 'tiny', '--out', out, '--force', '--seed', '5').status, 0, '--force replaces')
  t.same(partials(dir), [])
})
