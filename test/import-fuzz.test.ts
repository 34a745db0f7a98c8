// Fuzzing: a seeded corpus of mutated safetensors checkpoints and model manifests, generated here
// from a few valid seeds. Every input must end in a clean HetmoeError or a valid model: no other
// exception, no crash, no hang (tap's timeout), and after a failure nothing half-written.
import t from 'tap'
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { pack, unpack } from 'msgpackr'
import { HetmoeError } from '../runtime/errors.js'
import { importCheckpoint } from '../experts/import.js'
import { MANIFEST_FILE, WEIGHTS_FILE } from '../experts/manifest.js'
import { loadModel } from '../experts/model.js'
import { expertForwardRef } from '../experts/reference.js'
import { makeModel, partials, tempDir } from './helpers/models.js'
import { testRng, writeCheckpoint, type CheckpointSpec } from './helpers/safetensors-writer.js'

const CHECKPOINT_CASES = Number(process.env.HETMOE_FUZZ_CHECKPOINTS ?? 3000)
const MANIFEST_CASES = Number(process.env.HETMOE_FUZZ_MANIFESTS ?? 4000)

type Rand = ReturnType<typeof testRng>
const pick = <T>(r: Rand, xs: readonly T[]): T => xs[Math.floor(r.u() * xs.length)]
const int = (r: Rand, n: number) => Math.floor(r.u() * n)

/** A random JSON-ish value, biased towards the ones that break size and offset checks. */
function oddValue(r: Rand, near?: unknown): unknown {
  const n = typeof near === 'number' ? near : 0
  return pick(r, [
    () => n + 1,
    () => n - 1,
    () => n + 4096,
    () => -n - 1,
    () => n * 2,
    () => n / 2,
    () => 0,
    () => -1,
    () => 2 ** 53,
    () => 2 ** 31,
    () => 1e300,
    () => NaN,
    () => 'x',
    () => null,
    () => true,
    () => [],
    () => ({}),
    () => [n, n],
    () => undefined,
  ])()
}

/** Replaces (or deletes) one value somewhere inside a JSON/msgpack tree. */
function mutateTree(r: Rand, root: any): void {
  let node = root
  for (let depth = 0; depth < 12; depth++) {
    const keys = node && typeof node === 'object' ? Object.keys(node) : []
    if (!keys.length) return
    const k = pick(r, keys)
    const child = node[k]
    if (child && typeof child === 'object' && r.u() < 0.75) {
      node = child
      continue
    }
    const v = oddValue(r, child)
    if (v === undefined) {
      if (Array.isArray(node)) node.splice(Number(k), 1)
      else delete node[k]
    } else node[k] = v
    return
  }
}

function mutateBytes(r: Rand, b: Uint8Array, hot = b.length): Uint8Array {
  const op = int(r, 5)
  if (op === 0) {
    const c = Uint8Array.from(b)
    for (let i = 0, n = 1 + int(r, 4); i < n; i++) c[int(r, Math.min(hot, c.length))] ^= 1 << int(r, 8)
    return c
  }
  if (op === 1) return b.slice(0, int(r, b.length))
  if (op === 2) return Buffer.concat([b, Buffer.from(Array.from({ length: 1 + int(r, 64) }, () => int(r, 256)))])
  if (op === 3) {
    const c = Uint8Array.from(b)
    const at = int(r, Math.min(hot, c.length))
    c.fill(pick(r, [0, 0xff, 0x7f, 0x80]), at, at + 1 + int(r, 8))
    return c
  }
  const at = int(r, b.length)
  return Buffer.concat([b.subarray(0, at), b.subarray(Math.min(b.length, at + 1 + int(r, 16)))])
}

/** Mutates one safetensors file's bytes: its header length, its JSON, or raw bytes. */
function mutateSafetensors(r: Rand, b: Uint8Array): Uint8Array {
  const buf = Buffer.from(b)
  if (buf.length < 8) return mutateBytes(r, buf)
  const n = Number(buf.readBigUInt64LE(0))
  const op = int(r, 4)
  if (op === 0) {
    const c = Buffer.from(buf)
    c.writeBigUInt64LE(BigInt.asUintN(64, pick(r, [BigInt(n + 1), BigInt(Math.max(0, n - 1)), BigInt(n + 8), 0n, 0xffffffffffffffffn, BigInt(buf.length), BigInt(int(r, 2 ** 31))])))
    return c
  }
  if (op === 1 && n + 8 <= buf.length) {
    let h: any
    try {
      h = JSON.parse(buf.subarray(8, 8 + n).toString())
    } catch {
      return mutateBytes(r, buf)
    }
    const names = Object.keys(h)
    const name = pick(r, names)
    const e = h[name]
    const what = int(r, 7)
    if (what === 0 && e) e.dtype = pick(r, ['F16', 'BF16', 'F32', 'F64', 'I8', 'Q4', '', 'f32'])
    else if (what === 1 && e?.shape) e.shape[int(r, e.shape.length)] = oddValue(r, e.shape[0])
    else if (what === 2 && e?.data_offsets) e.data_offsets[int(r, 2)] = oddValue(r, e.data_offsets[0])
    else if (what === 3) delete h[name]
    else if (what === 4) h[name.replace(/experts\.\d+/, `experts.${int(r, 9)}`).replace(/layers\.\d+/, `layers.${int(r, 3)}`)] = e
    else if (what === 5) h[name] = oddValue(r)
    else mutateTree(r, h)
    const hb = Buffer.from(JSON.stringify(h) ?? '')
    const len = Buffer.alloc(8)
    len.writeBigUInt64LE(BigInt(hb.length))
    return Buffer.concat([len, hb, buf.subarray(8 + n)])
  }
  return mutateBytes(r, buf, op === 2 ? n + 8 : buf.length)
}

function mutateJsonFile(r: Rand, b: Uint8Array): Uint8Array {
  if (r.u() < 0.2) return mutateBytes(r, b)
  let c: any
  try {
    c = JSON.parse(Buffer.from(b).toString())
  } catch {
    return mutateBytes(r, b)
  }
  mutateTree(r, c)
  return Buffer.from(JSON.stringify(c) ?? 'null')
}

function readSeed(dir: string): Map<string, Uint8Array> {
  return new Map(readdirSync(dir).map((f) => [f, readFileSync(join(dir, f))]))
}

t.test(`${CHECKPOINT_CASES} mutated checkpoints: clean errors or valid models, never partial output`, async (t) => {
  const dir = tempDir(t, 'hetmoe-fuzz-ck-')
  const specs: CheckpointSpec[] = [
    { arch: 'mixtral', hidden: 16, inner: 16, experts: 3, topK: 2, layers: 1, dtype: 'F32', seed: 1 },
    { arch: 'mixtral', hidden: 16, inner: 32, experts: 2, topK: 1, layers: 2, dtype: 'BF16', shards: 2, seed: 2 },
    { arch: 'qwen2_moe', hidden: 16, inner: 16, experts: 2, topK: 2, layers: 1, dtype: 'F16', shared: 16, seed: 3 },
    { arch: 'deepseek', hidden: 16, inner: 16, experts: 2, topK: 1, layers: 2, shared: 1, firstDense: 1, seed: 4 },
  ]
  const seeds = specs.map((s, i) => {
    const d = join(dir, `seed${i}`)
    writeCheckpoint(d, s)
    return readSeed(d)
  })
  const r = testRng(20261124)
  const counts = { cases: 0, imported: 0, errors: 0 }
  const byMessage = new Map<string, number>()
  const work = join(dir, 'work')
  const out = join(dir, 'out')
  for (let i = 0; i < CHECKPOINT_CASES; i++) {
    const files = new Map(pick(r, seeds))
    const format = pick(r, ['dense', 'dense', '2:4', '75%'] as const)
    for (let m = 0, n = 1 + int(r, 2); m < n; m++) {
      const names = [...files.keys()]
      const f = pick(r, names)
      if (f.endsWith('.safetensors')) files.set(f, mutateSafetensors(r, files.get(f)!))
      else if (r.u() < 0.1) files.delete(f)
      else files.set(f, mutateJsonFile(r, files.get(f)!))
    }
    rmSync(work, { recursive: true, force: true })
    mkdirSync(work)
    for (const [f, b] of files) writeFileSync(join(work, f), b)
    counts.cases++
    try {
      await importCheckpoint(work, { out, format })
      counts.imported++
      const m = await loadModel(out)
      m.close()
      rmSync(out, { recursive: true })
    } catch (err) {
      if (!(err instanceof HetmoeError)) {
        t.fail(`case ${i}: ${String((err as Error)?.stack ?? err)}`)
        continue
      }
      counts.errors++
      const key = err.message.replace(/\/\S+\//g, '').replace(/\d+/g, 'N').slice(0, 60)
      byMessage.set(key, (byMessage.get(key) ?? 0) + 1)
      if (existsSync(out)) t.fail(`case ${i}: ${out} exists after "${err.message}"`)
    }
  }
  t.same(partials(dir), [], 'no temp directories left')
  t.ok(counts.errors > CHECKPOINT_CASES / 2, `${counts.errors} clean errors, ${counts.imported} imported`)
  t.ok(byMessage.size > 20, `${byMessage.size} distinct error kinds`)
  t.comment(JSON.stringify(counts))
})

t.test(`${MANIFEST_CASES} mutated manifests: clean errors or loadable models`, async (t) => {
  const dir = tempDir(t, 'hetmoe-fuzz-mf-')
  const preset = { name: 'fuzz', layers: 2, hidden: 16, inner: 32, ffn: 'swiglu' as const, routing: { kind: 'rre' as const, domains: 2, expertsPerDomain: 2 }, vocabSize: 8 }
  const gated = { ...preset, name: 'fuzz-gated', ffn: 'gelu' as const, routing: { kind: 'gate' as const, experts: 3, topK: 2, normalize: false } }
  const seeds = [
    await makeModel(dir, preset, { format: '75%' }),
    await makeModel(dir, gated, { format: 'dense', dtype: 'fp32' }),
    await makeModel(dir, preset, { format: '2:4' }),
  ].map((p) => ({ manifest: readFileSync(join(p, MANIFEST_FILE)), weights: readFileSync(join(p, WEIGHTS_FILE)) }))
  const r = testRng(7)
  const counts = { cases: 0, loaded: 0, errors: 0 }
  const model = join(dir, 'model')
  mkdirSync(model)
  const x = Float32Array.from({ length: 16 }, () => r.normal())
  let lastWeights: Uint8Array | undefined
  for (let i = 0; i < MANIFEST_CASES; i++) {
    const s = pick(r, seeds)
    let manifest: Uint8Array
    if (r.u() < 0.35) manifest = mutateBytes(r, s.manifest)
    else {
      const m = unpack(s.manifest)
      for (let k = 0, n = 1 + int(r, 2); k < n; k++) mutateTree(r, m)
      manifest = pack(m)
    }
    let weights: Uint8Array = s.weights
    if (r.u() < 0.05) weights = r.u() < 0.5 ? s.weights.subarray(0, int(r, s.weights.length)) : Buffer.concat([s.weights, Buffer.alloc(4096)])
    writeFileSync(join(model, MANIFEST_FILE), manifest)
    if (weights !== lastWeights) writeFileSync(join(model, WEIGHTS_FILE), weights)
    lastWeights = weights
    counts.cases++
    try {
      const m = await loadModel(model)
      counts.loaded++
      // Touch everything a kernel would: every matrix decoded, one expert run, the routing data.
      for (const [li, l] of m.layers.entries()) {
        for (const e of [...l.experts, ...l.sharedExperts]) for (const ref of [e.gate, e.up, e.down]) if (ref) m.denseMatrix(ref)
        if (l.routing.kind === 'rre') m.rreTable(li)
        else m.gateWeight(li)
        const y = expertForwardRef(m, li, 0, x.subarray(0, m.manifest.hiddenSize))
        if (y.length !== m.manifest.hiddenSize) t.fail(`case ${i}: output size`)
      }
      m.close()
    } catch (err) {
      if (!(err instanceof HetmoeError)) {
        t.fail(`case ${i}: ${String((err as Error)?.stack ?? err)}`)
        continue
      }
      counts.errors++
    }
  }
  t.ok(counts.errors > MANIFEST_CASES / 2, `${counts.errors} clean errors, ${counts.loaded} loaded`)
  t.comment(JSON.stringify(counts))
  // The seed models are untouched by the fuzzing of their copies.
  t.ok(seeds.every((s) => s.weights.length % 4096 === 0))
})
