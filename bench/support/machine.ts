// The `machine` block every bench result carries: what ran it, and at which commit.
import { execFileSync } from 'node:child_process'
import { native, packageRoot } from '../../runtime/native.js'
import { bestIsa } from '../../runtime/info.js'

export function benchMachine(): { cpu: string; isa: string; cores: number; gpu: string | null; commit: string; node: string } {
  const info = native().info()
  // HETMOE_COMMIT first: on the GPU machine the working tree's .git is a stale copy (the commit the
  // session started from), so the development machine passes the commit it built.
  let commit = process.env.HETMOE_COMMIT ?? 'unknown'
  if (!process.env.HETMOE_COMMIT)
    try {
      commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: packageRoot, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim()
    } catch {}
  return { cpu: info.cpu.model, isa: bestIsa(info.cpu.isa), cores: info.cpu.logicalCores, gpu: info.gpu.devices[0]?.name ?? null, commit, node: process.version }
}
