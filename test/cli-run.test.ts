import t from 'tap'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { packageRoot } from '../runtime/native.js'
import { WARMUP } from '../runtime/stream-runner.js'

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
  const r = JSON.parse(stdout) as { report: { tokens: number; batches: number; warmupBatches: number; tokensPerS: number; gpuTokenShare: number; perLayer: unknown[] } }
  t.equal(r.report.tokens, 40)
  t.ok(r.report.warmupBatches > 1 && r.report.warmupBatches <= WARMUP.maxBatches, `warmed up until steady by default: ${r.report.warmupBatches} batches`)
  t.equal(r.report.batches, 5)
  t.ok(r.report.tokensPerS > 0)
  t.equal(r.report.gpuTokenShare, 0)
  t.equal(r.report.perLayer.length, 2)

  const tokens = join(dir, 'tokens.txt')
  writeFileSync(tokens, '1 2 3\n31999 17 5\n')
  const text = await hetmoe('run', '--model', model, '--tokens', tokens, '--domain', '1', '--gpu', 'off', '--warmup', '1')
  t.match(text.stdout, /6 tokens in 1 batches of 16, 2 MoE layers: .* tokens\/s \(after 1 untimed warm-up batch\)/)
  t.match(text.stdout, /layer +ms\/batch/)

  // --no-replace reaches the runtime as replace: false (what it does there: runtime-replace.test.ts).
  const fixed = JSON.parse((await hetmoe('run', '--model', model, '--synthetic', '16', '--gpu', 'off', '--no-replace', '--json')).stdout) as { gpu: { replacements: number } }
  t.equal(fixed.gpu.replacements, 0)
})

t.test('hetmoe run: bad use exits 2 naming the flag; bad data exits 1 naming the problem', async (t) => {
  const model = join(dir, 'tiny')
  await t.rejects(hetmoe('run', '--synthetic', '4'), { code: 2, stderr: /--model DIR is required/ })
  await t.rejects(hetmoe('run', '--model', model), { code: 2, stderr: /exactly one of --tokens FILE and --synthetic N/ })
  await t.rejects(hetmoe('run', '--model', model, '--synthetic', '4', '--batch', '0'), { code: 2, stderr: /--batch must be an integer >= 1/ })
  await t.rejects(hetmoe('run', '--model', model, '--synthetic', '4', '--warmup', 'some'), { code: 2, stderr: /--warmup must be an integer >= 0/ })
  const bad = join(dir, 'bad.txt')
  writeFileSync(bad, '1 2 99999\n')
  await t.rejects(hetmoe('run', '--model', model, '--tokens', bad, '--gpu', 'off'), { code: 1, stderr: /99999/ })
  await t.rejects(hetmoe('run', '--model', join(dir, 'nope'), '--synthetic', '4'), { code: 1, stderr: /nope/ })
})

t.test('hetmoe run --plan takes the plan batch size unless --batch says otherwise', async (t) => {
  const model = join(dir, 'tiny')
  const tokens = join(dir, 'plan-tokens.txt')
  writeFileSync(tokens, Array.from({ length: 24 }, (_, i) => (i * 37) % 1000).join(' '))
  const plan = join(dir, 'plan.json')
  await hetmoe('place', '--model', model, '--tokens', tokens, '--gpu-mem', '1MiB', '--batch', '6', '--out', plan)
  const planned = JSON.parse((await hetmoe('run', '--model', model, '--tokens', tokens, '--plan', plan, '--gpu', 'off', '--json')).stdout) as { report: { batchSize: number; batches: number }; plan?: unknown }
  t.equal(planned.report.batchSize, 6, "the plan's batch size")
  t.equal(planned.report.batches, 4)
  t.equal(planned.plan, undefined, 'no comparison with a prediction made for a GPU the run did not use')
  const own = JSON.parse((await hetmoe('run', '--model', model, '--tokens', tokens, '--plan', plan, '--batch', '8', '--gpu', 'off', '--json')).stdout) as { report: { batchSize: number } }
  t.equal(own.report.batchSize, 8, '--batch wins')
})
