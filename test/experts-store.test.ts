import t from 'tap'
import { existsSync, readFileSync, writeFileSync, truncateSync, statSync, appendFileSync } from 'node:fs'
import { join } from 'node:path'
import { pack, unpack } from 'msgpackr'
import { HetmoeError } from '../runtime/errors.js'
import { native } from '../runtime/native.js'
import { BLOB_ALIGN, MANIFEST_FILE, WEIGHTS_FILE, type ModelManifest } from '../experts/manifest.js'
import { StoreWriter, writeStore } from '../experts/store-writer.js'
import { readManifest, validateManifest } from '../experts/store-reader.js'
import { loadModel } from '../experts/model.js'
import { makeModel, MICRO, MICRO_GATED, partials, tempDir } from './helpers/models.js'

t.test('the writer aligns every blob and commits atomically', async (t) => {
  const dir = tempDir(t)
  const out = join(dir, 'm')
  const w = StoreWriter.create(out)
  const a = w.addBlob(new Uint8Array([1, 2, 3]))
  const b = w.addBlob(new Float32Array(1500).fill(2.5))
  t.same(a, { offset: 0, bytes: 3 })
  t.same(b, { offset: BLOB_ALIGN, bytes: 6000 })
  t.equal(w.bytesWritten, 3 * BLOB_ALIGN)
  t.notOk(existsSync(out), 'nothing at the target before commit')
  t.same(partials(dir).length, 1, 'one temp dir beside the target')
  w.abort()
  t.same(partials(dir), [], 'abort removes it')
  t.notOk(existsSync(out))
})

t.test('async and sync blobs land at their offsets; padding reads as zeros', async (t) => {
  const dir = tempDir(t)
  const out = join(dir, 'm')
  const a = new Uint8Array(5000).fill(1)
  const b = new Uint8Array(100).fill(2)
  const c = new Uint8Array(4096).fill(3)
  const refs: { offset: number; bytes: number }[] = []
  let bin = Buffer.alloc(0)
  const written = writeStore(out, {}, async (w) => {
    const ra = w.addBlobAsync(a)
    refs.push(ra.ref, w.addBlob(b), w.addBlobAsync(c).ref)
    // Before any await: both async writes are still in flight. (After awaiting a's, c's had sometimes
    // finished too on a loaded machine, and commit went on to reject the manifest instead.)
    t.throws(() => w.commit({} as never), /await flush\(\) first/)
    await ra.written
    await w.flush()
    bin = readFileSync(join(w.tempDir, WEIGHTS_FILE))
    // No layers: the writer validates before committing, so this model is never created.
    return { name: 'n', origin: 'o', hiddenSize: 1, ffnSize: 1, ffn: 'swiglu', dtype: 'fp32', vocabSize: 0, layers: [], provenance: {} }
  })
  await t.rejects(written, { code: 'BAD_MODEL', message: /manifest\.msgpack: layers: expected at least 1 entries/ })
  t.notOk(existsSync(out), 'an invalid manifest is never committed')
  t.same(partials(dir), [])
  t.same(refs, [{ offset: 0, bytes: 5000 }, { offset: 8192, bytes: 100 }, { offset: 12288, bytes: 4096 }])
  t.equal(bin.length, 16384)
  const expect = new Uint8Array(16384)
  expect.set(a, 0)
  expect.set(b, 8192)
  expect.set(c, 12288)
  t.ok(Buffer.from(expect).equals(bin), 'contents, zero padding included')
})

t.test('a failure while writing leaves no partial model; an existing target is refused', async (t) => {
  const dir = tempDir(t)
  const out = join(dir, 'm')
  await t.rejects(
    writeStore(out, {}, (w) => {
      w.addBlob(new Uint8Array(10000).fill(7))
      throw new HetmoeError('BAD_MODEL', 'boom')
    }),
    { code: 'BAD_MODEL', message: 'boom' },
  )
  t.notOk(existsSync(out))
  t.same(partials(dir), [])
  const m = await makeModel(dir, MICRO)
  t.throws(() => StoreWriter.create(m), { code: 'BAD_OPTION', message: /already exists/ })
  const before = readFileSync(join(m, WEIGHTS_FILE))
  await makeModel(dir, MICRO, { seed: 0 }).catch((e) => t.match(e, { code: 'BAD_OPTION' }))
  t.same(readFileSync(join(m, WEIGHTS_FILE)), before, 'a refused write leaves the old model alone')
})

t.test('loadModel maps the weights once and gives zero-copy, aligned, typed views', async (t) => {
  const dir = tempDir(t)
  const path = await makeModel(dir, MICRO, { format: '2:4' })
  const m = await loadModel(path)
  t.equal(m.bytes, statSync(join(path, WEIGHTS_FILE)).size)
  const again = await loadModel(path)
  t.equal(again.weightsId, m.weightsId, 'the same file maps to the same id')
  again.close()
  const ref = m.matrix(1, 4, 'up')
  t.match(ref, { rows: 48, cols: 32, format: '2:4', dtype: 'bf16' })
  const vals = new Uint16Array(m.view(ref.values))
  t.equal(native().addressMod(vals), 0, 'views start on a 4096-byte boundary')
  const fromFile = new Uint16Array(readFileSync(join(path, WEIGHTS_FILE)).buffer.slice(ref.values.offset, ref.values.offset + ref.values.bytes))
  t.same(Array.from(vals), Array.from(fromFile), 'the view shows the file bytes')
  const dense = m.denseMatrix(ref)
  t.equal(dense.length, 48 * 32)
  t.equal(dense.filter((x) => x !== 0).length, 48 * 32 / 2, '2:4: half the weights nonzero')
  t.equal(m.rreTable(0).length, 2 * 50)
  t.throws(() => m.gateWeight(0), { code: 'BAD_INPUT' })
  t.throws(() => m.matrix(0, 6, 'gate'), { code: 'BAD_INPUT', message: /expert 6 does not exist/ })
  t.throws(() => m.matrix(2, 0, 'gate'), { code: 'BAD_INPUT', message: /layer 2 does not exist/ })
  {
    using scoped = await loadModel(path)
    t.ok(scoped.view(ref.values))
  }
  t.ok(m.view(ref.values), 'disposing another handle keeps this one mapped')
  m.close()
  t.throws(() => m.view(ref.values), { code: 'BAD_INPUT', message: /closed/ })
  m.close()
  const g = await loadModel(await makeModel(dir, MICRO_GATED))
  t.equal(g.gateWeight(0).length, 5 * 32)
  t.throws(() => g.rreTable(0), { code: 'BAD_INPUT' })
  g.close()
})

// Each mutation of a good manifest and the field its error must name.
function mutations(): [string, (m: any) => void, RegExp][] {
  return [
    ['wrong format tag', (m) => (m.format = 'gguf'), /format: expected "hetmoe-model"/],
    ['future version', (m) => (m.version = 2), /version: this hetmoe reads manifest version 1, got number 2/],
    ['weightsBytes mismatch', (m) => (m.weightsBytes += 4096), /weightsBytes: .* but weights\.bin has/],
    ['misaligned blob', (m) => (m.layers[0].experts[1].up.values.offset += 2), /layers\[0\]\.experts\[1\]\.up\.values\.offset: .* not a multiple of 4096/],
    ['blob past the end', (m) => (m.layers[1].experts[5].down.values.offset = m.weightsBytes), /layers\[1\]\.experts\[5\]\.down\.values: .* runs past the end/],
    ['blob bytes mismatch', (m) => (m.layers[0].experts[0].gate.values.bytes -= 2), /layers\[0\]\.experts\[0\]\.gate\.values\.bytes: .* does not match/],
    ['shape inconsistent with hiddenSize', (m) => (m.layers[0].experts[2].down.rows = 16), /layers\[0\]\.experts\[2\]\.down\.rows: 16 rows, expected 32/],
    ['unknown weight format', (m) => (m.layers[0].experts[0].up.format = '3:4'), /layers\[0\]\.experts\[0\]\.up\.format: expected one of dense, 2:4, 75%/],
    ['sparse format without metadata', (m) => (m.layers[0].experts[0].up.format = '2:4'), /layers\[0\]\.experts\[0\]\.up\.values\.bytes/],
    ['missing gate in a SwiGLU expert', (m) => delete m.layers[0].experts[3].gate, /layers\[0\]\.experts\[3\]\.gate: expected an object, got nothing/],
    ['domains leave experts uncovered', (m) => (m.layers[0].routing.domains[1].numExperts = 2), /layers\[0\]\.routing\.domains: the domain groups cover 5 experts, the layer has 6/],
    ['domains overlap', (m) => (m.layers[1].routing.domains[1].firstExpert = 2), /layers\[1\]\.routing\.domains\[1\]\.firstExpert: 2, expected 3/],
    ['duplicate domain names', (m) => (m.layers[1].routing.domains[1].name = m.layers[1].routing.domains[0].name), /layers\[1\]\.routing\.domains\[1\]\.name: domain "general" appears twice/],
    ['table size mismatch', (m) => (m.vocabSize = 60), /layers\[0\]\.routing\.table\.bytes/],
    ['two blobs overlap', (m) => (m.layers[0].experts[1].up.values = { ...m.layers[0].experts[0].up.values }), /layers\[0\]\.experts\[1\]\.up\.values: overlaps layers\[0\]\.experts\[0\]\.up\.values/],
    ['layer index twice', (m) => (m.layers[1].index = 0), /layers\[1\]\.index: layer index 0 appears twice/],
    ['no layers', (m) => (m.layers = []), /layers: expected at least 1 entries/],
    ['hiddenSize not an integer', (m) => (m.hiddenSize = 32.5), /hiddenSize: expected an integer/],
    ['ffn kind unknown', (m) => (m.ffn = 'relu'), /ffn: expected one of swiglu, gelu/],
    ['not an object', (m) => (m.layers[0].experts[0] = [1, 2]), /layers\[0\]\.experts\[0\]: expected an object, got an array/],
  ]
}

t.test('the reader rejects inconsistent manifests, naming the file and the field', async (t) => {
  const dir = tempDir(t)
  const path = await makeModel(dir, MICRO)
  const good = unpack(readFileSync(join(path, MANIFEST_FILE))) as ModelManifest
  const size = statSync(join(path, WEIGHTS_FILE)).size
  t.ok(validateManifest(good, size), 'the good manifest validates')
  for (const [what, mutate, message] of mutations()) {
    const m = structuredClone(good) as any
    mutate(m)
    t.throws(() => validateManifest(m, size, '/x/manifest.msgpack'), { code: 'BAD_MODEL', message: new RegExp(`^/x/manifest\\.msgpack: ${message.source}`) }, what)
  }
})

t.test('gate routing: topK within the experts, gate weight sized E × D', async (t) => {
  const dir = tempDir(t)
  const path = await makeModel(dir, MICRO_GATED)
  const good = unpack(readFileSync(join(path, MANIFEST_FILE))) as any
  const size = statSync(join(path, WEIGHTS_FILE)).size
  const bad = (f: (m: any) => void, re: RegExp) => {
    const m = structuredClone(good)
    f(m)
    t.throws(() => validateManifest(m, size), { code: 'BAD_MODEL', message: re })
  }
  bad((m) => (m.layers[0].routing.topK = 6), /layers\[0\]\.routing\.topK: 6 is outside \[1, 5\]/)
  bad((m) => (m.layers[0].routing.topK = 0), /routing\.topK/)
  bad((m) => (m.layers[0].routing.normalize = 'yes'), /routing\.normalize: expected a boolean/)
  bad((m) => (m.layers[0].routing.weight.bytes = 4), /routing\.weight\.bytes/)
  bad((m) => (m.layers[0].routing.kind = 'hash'), /routing\.kind: expected one of rre, gate/)
})

t.test('readManifest: missing files, garbage, truncation and bad RRE table values', async (t) => {
  const dir = tempDir(t)
  const path = await makeModel(dir, MICRO)
  t.throws(() => readManifest(join(dir, 'nope')), { code: 'BAD_MODEL', message: /nope\/manifest\.msgpack: cannot read the manifest \(ENOENT\)/ })
  const manifestPath = join(path, MANIFEST_FILE)
  const good = readFileSync(manifestPath)
  writeFileSync(manifestPath, Buffer.from('this is not msgpack at all'))
  t.throws(() => readManifest(path), { code: 'BAD_MODEL', message: /manifest\.msgpack: / })
  writeFileSync(manifestPath, good)
  const m = unpack(good) as any
  // Table entry 7 of domain 1 of layer 1 points outside its group of 3.
  const table = m.layers[1].routing.table
  const w = readFileSync(join(path, WEIGHTS_FILE))
  w.writeInt32LE(3, table.offset + (50 + 7) * 4)
  writeFileSync(join(path, WEIGHTS_FILE), w)
  t.throws(() => readManifest(path), { code: 'BAD_MODEL', message: /layers\[1\]\.routing\.table: domain 1 maps token 7 to expert 3, outside \[0, 3\)/ })
  w.writeInt32LE(0, table.offset + (50 + 7) * 4)
  writeFileSync(join(path, WEIGHTS_FILE), w)
  t.ok(readManifest(path))
  appendFileSync(join(path, WEIGHTS_FILE), Buffer.alloc(10))
  await t.rejects(loadModel(path), { code: 'BAD_MODEL', message: /weightsBytes/ })
  truncateSync(join(path, WEIGHTS_FILE), 4096)
  await t.rejects(loadModel(path), { code: 'BAD_MODEL', message: /weightsBytes/ })
  writeFileSync(manifestPath, pack({ ...m, version: 99 }))
  await t.rejects(loadModel(path), { code: 'BAD_MODEL', message: /version/ })
})

t.test('worker threads attach to the same mapping (same id, no copy)', async (t) => {
  const { Worker } = await import('node:worker_threads')
  const { attachModel } = await import('../experts/model.js')
  const dir = tempDir(t)
  const m = await loadModel(await makeModel(dir, MICRO))
  const up = new Uint16Array(m.view(m.matrix(1, 2, 'up').values))
  let sum = 0
  for (const v of up) sum = (sum + v) >>> 0
  const workerFile = new URL('./fixtures/model-worker.js', import.meta.url)
  const results = await Promise.all(
    [0, 1].map(
      () =>
        new Promise<{ weightsId: number; sum: number; aligned: boolean }>((resolve, reject) => {
          const w = new Worker(workerFile, { workerData: { handle: m.handle(), layer: 1, expert: 2 } })
          w.once('message', resolve)
          w.once('error', reject)
        }),
    ),
  )
  for (const r of results) t.same(r, { weightsId: m.weightsId, sum, aligned: true })
  const same = await attachModel(m.handle())
  t.equal(same.weightsId, m.weightsId)
  same.close()
  t.ok(m.view(m.matrix(0, 0, 'gate').values), 'workers closing their handles leaves ours mapped')
  m.close()
})
