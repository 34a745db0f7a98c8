import t from 'tap'
import { execFileSync } from 'node:child_process'
import { join } from 'node:path'
import { packageRoot } from '../runtime/native.js'
import { bestIsa, type MachineInfo } from '../runtime/info.js'

const cli = join(packageRoot, 'dist', 'runtime', 'cli', 'main.js')

t.test('hetmoe info --json reports the CPU and the GPU state', async (t) => {
  const out = execFileSync(process.execPath, [cli, 'info', '--json'], { encoding: 'utf8' })
  const info = JSON.parse(out) as MachineInfo
  t.equal(info.hetmoe.addonBuilt, true)
  t.type(info.cpu.isa.avx512f, 'boolean')
  t.type(info.cpu.isa.amxGranted, 'boolean')
  t.ok(['scalar', 'avx2', 'avx512', 'avx512bf16', 'amx'].includes(info.cpu.bestIsa))
  t.ok(info.memory.totalBytes > 0)
  t.type(info.gpu.compiled, 'boolean')
  if (info.gpu.devices.length === 0) t.match(info.gpu.error, /\S/, 'says why there is no GPU')
  else t.ok(info.gpu.devices[0].totalBytes > 0)
})

t.test('hetmoe info prints a report for a person', async (t) => {
  const out = execFileSync(process.execPath, [cli, 'info'], { encoding: 'utf8' })
  t.match(out, /^hetmoe \d+\.\d+\.\d+/)
  t.match(out, /CPU .* logical cores/)
  t.match(out, /CUDA /)
  t.match(out, /GPU/)
})

t.test('unknown commands and flags exit 2 with usage', async (t) => {
  for (const args of [['nope'], ['info', '--bogus']]) {
    try {
      execFileSync(process.execPath, [cli, ...args], { encoding: 'utf8', stdio: 'pipe' })
      t.fail('should exit non-zero')
    } catch (e) {
      const err = e as { status: number; stderr: string }
      t.equal(err.status, 2)
      t.match(err.stderr, /Usage: hetmoe/)
    }
  }
})

t.test('bestIsa picks the highest usable level', async (t) => {
  const none = { avx2: false, fma: false, f16c: false, avx512f: false, avx512bw: false, avx512vl: false, avx512dq: false, avx512bf16: false, amxTile: false, amxBf16: false, amxGranted: false }
  t.equal(bestIsa(none), 'scalar')
  t.equal(bestIsa({ ...none, avx2: true, fma: true, f16c: true }), 'avx2')
  t.equal(bestIsa({ ...none, avx512f: true, avx512bw: true }), 'avx512')
  t.equal(bestIsa({ ...none, avx512f: true, avx512bw: true, avx512bf16: true }), 'avx512bf16')
  t.equal(bestIsa({ ...none, avx512f: true, avx512bw: true, avx512bf16: true, amxTile: true, amxBf16: true }), 'avx512bf16', 'AMX without the OS grant is not used')
  t.equal(bestIsa({ ...none, avx512f: true, avx512bw: true, avx512bf16: true, amxTile: true, amxBf16: true, amxGranted: true }), 'amx')
})
