import t from 'tap'
import { spawnSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { extractDomain } from '../experts/extract.js'
import { loadModel } from '../experts/model.js'
import { expertForwardRef, layerForwardRef } from '../experts/reference.js'
import { makeModel, MICRO, MICRO_GATED, partials, tempDir } from './helpers/models.js'
import { testRng } from './helpers/safetensors-writer.js'

const cli = fileURLToPath(new URL('../runtime/cli/main.js', import.meta.url))
const bits = (a: Float64Array) => Array.from(new Uint32Array(a.buffer))

t.test('extract keeps one domain and gives bit-identical outputs', async (t) => {
  const dir = tempDir(t)
  const preset = { ...MICRO, routing: { kind: 'rre' as const, domains: 3, expertsPerDomain: 2 } }
  for (const [format, dtype] of [['dense', 'bf16'], ['75%', 'fp32']] as const) {
    const src = await makeModel(dir, preset, { format, dtype, seed: 9 })
    const full = await loadModel(src)
    for (const domain of ['code', 2] as const) {
      const out = join(dir, `sub-${format.replace(/\W/g, '_')}-${domain}`)
      const manifest = await extractDomain(src, { domain, out })
      const d = typeof domain === 'number' ? domain : 1
      const name = ['general', 'code', 'math'][d]
      const sub = await loadModel(out)
      t.equal(manifest.name, `${full.manifest.name}.${name}`)
      t.match(manifest.provenance, { domain: name, domainIndex: d })
      t.ok(sub.bytes < full.bytes / 2, `smaller: ${sub.bytes} of ${full.bytes} bytes`)
      const r = testRng(d)
      const tokenIds = [0, 1, 2, 3, 10, 49, 49, 17]
      const x = Float32Array.from({ length: tokenIds.length * 32 }, () => r.normal())
      for (let li = 0; li < 2; li++) {
        const l = sub.layers[li]
        t.same(l.routing, { kind: 'rre', seed: (full.layers[li].routing as { seed: number }).seed, domains: [{ name, firstExpert: 0, numExperts: 2 }], table: l.routing.kind === 'rre' ? l.routing.table : null })
        t.same(Array.from(sub.rreTable(li)), Array.from(full.rreTable(li).subarray(d * 50, d * 50 + 50)), `layer ${li}: the domain's table row`)
        for (let e = 0; e < 2; e++) {
          const y0 = expertForwardRef(full, li, 2 * d + e, x)
          const y1 = expertForwardRef(sub, li, e, x)
          t.same(bits(y1), bits(y0), `${format} layer ${li}: sub expert ${e} = full expert ${2 * d + e}, bit for bit`)
          for (const which of ['gate', 'up', 'down'] as const) {
            const a = new Uint8Array(full.view(full.matrix(li, 2 * d + e, which).values))
            const b = new Uint8Array(sub.view(sub.matrix(li, e, which).values))
            if (!Buffer.from(a).equals(Buffer.from(b))) t.fail(`${which} bytes differ`)
          }
        }
        const a = layerForwardRef(full, li, { x, tokenIds, domain: name })
        const b = layerForwardRef(sub, li, { x, tokenIds, domain: 0 })
        t.same(bits(b.out), bits(a.out), `layer ${li}: whole-layer outputs bit for bit`)
        t.same(Array.from(b.routes.experts, (e) => e + 2 * d), Array.from(a.routes.experts), 'routes renumbered')
      }
      sub.close()
    }
    full.close()
  }
})

t.test('extract: unknown domains, models without domains, and the CLI', async (t) => {
  const dir = tempDir(t)
  const src = await makeModel(dir, MICRO)
  await t.rejects(extractDomain(src, { domain: 'poetry', out: join(dir, 'x') }), { code: 'BAD_OPTION', message: /unknown domain "poetry"; the model has 0: general, 1: code/ })
  await t.rejects(extractDomain(src, { domain: 5, out: join(dir, 'x') }), { code: 'BAD_OPTION' })
  const gated = await makeModel(dir, MICRO_GATED)
  await t.rejects(extractDomain(gated, { domain: 0, out: join(dir, 'x') }), { code: 'UNSUPPORTED', message: /no RRE layer/ })
  t.notOk(existsSync(join(dir, 'x')))
  const run = (...args: string[]) => spawnSync(process.execPath, [cli, 'extract', ...args], { encoding: 'utf8', env: { ...process.env, CI: 'true' } })
  const ok = run('--model', src, '--domain', '1', '--out', join(dir, 'sub'))
  t.equal(ok.status, 0, ok.stderr)
  t.match(ok.stdout, /\.code: 2 layers × 3 experts/)
  t.match(ok.stderr, /extract: 100%/)
  const bad = run('--model', src, '--domain', 'poetry', '--out', join(dir, 'sub2'))
  t.equal(bad.status, 1)
  t.match(bad.stderr, /unknown domain/)
  t.equal(run('--model', src, '--out', join(dir, 'sub3')).status, 2)
  t.same(partials(dir), [])
})
