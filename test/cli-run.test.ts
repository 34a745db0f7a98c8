import t from 'tap'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { packageRoot } from '../runtime/native.js'

const run = promisify(execFile)
const cli = join(packageRoot, 'dist', 'runtime', 'cli', 'main.js')
const dir = mkdtempSync(join(tmpdir(), 'hetmoe-cli-run-'))
t.teardown(() => rmSync(dir, { recursive: true, force: true }))
const env = { ...process.env, HETMOE_CACHE_DIR: join(dir, 'cache'), CI: 'true' }
const hetmoe = (...args: string[]) => run(process.execPath, [cli, ...args], { env, maxBuffer: 1 << 24 })

t.test('hetmoe run over a synthetic Zipf stream and over a token file, as JSON', async (t) => {
  const model = join(dir, 'tiny')
  await hetmoe('synth', '--preset', 'tiny', '--out', model)
  const { stdout } = await hetmoe('run', '--model', model, '--synthetic', '40', '--batch', '8', '--gpu', 'off', '--json')
  const r = JSON.parse(stdout) as { report: { tokens: number; batches: number; tokensPerS: number; gpuTokenShare: number; perLayer: unknown[] } }
  t.equal(r.report.tokens, 40)
  t.equal(r.report.batches, 5)
  t.ok(r.report.tokensPerS > 0)
  t.equal(r.report.gpuTokenShare, 0)
  t.equal(r.report.perLayer.length, 2)

  const tokens = join(dir, 'tokens.txt')
  writeFileSync(tokens, '1 2 3\n31999 17 5\n')
  const text = await hetmoe('run', '--model', model, '--tokens', tokens, '--domain', '1', '--gpu', 'off')
  t.match(text.stdout, /6 tokens in 1 batches of 16, 2 MoE layers: .* tokens\/s \(after 1 untimed warm-up batch\)/)
  t.match(text.stdout, /layer +ms\/batch/)
})

t.test('hetmoe run: bad use exits 2 naming the flag; bad data exits 1 naming the problem', async (t) => {
  const model = join(dir, 'tiny')
  await t.rejects(hetmoe('run', '--synthetic', '4'), { code: 2, stderr: /--model DIR is required/ })
  await t.rejects(hetmoe('run', '--model', model), { code: 2, stderr: /exactly one of --tokens FILE and --synthetic N/ })
  await t.rejects(hetmoe('run', '--model', model, '--synthetic', '4', '--batch', '0'), { code: 2, stderr: /--batch must be an integer >= 1/ })
  const bad = join(dir, 'bad.txt')
  writeFileSync(bad, '1 2 99999\n')
  await t.rejects(hetmoe('run', '--model', model, '--tokens', bad, '--gpu', 'off'), { code: 1, stderr: /99999/ })
  await t.rejects(hetmoe('run', '--model', join(dir, 'nope'), '--synthetic', '4'), { code: 1, stderr: /nope/ })
})
