#!/usr/bin/env node
// Builds the native addon with cmake-js (`npm install` runs this).
//   HETMOE_CUDA=auto|on|off   CUDA backend: when a CUDA compiler is found (default), always, or never.
// With HETMOE_CUDA=auto a failed CUDA build falls back to a CPU-only build, saying so in one line.
import { spawnSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..')
const require = createRequire(import.meta.url)
const cuda = (process.env.HETMOE_CUDA ?? 'auto').toLowerCase()
if (!['auto', 'on', 'off'].includes(cuda)) {
  console.error(`hetmoe: HETMOE_CUDA must be auto, on or off (got "${process.env.HETMOE_CUDA}")`)
  process.exit(2)
}

// cmake-js downloads Node's headers unless told where they are; machines without internet access
// (ours) have them next to the node binary, so point it there when npm has not already.
if (!process.env.npm_config_nodedir) {
  const prefix = resolve(dirname(process.execPath), '..')
  if (existsSync(join(prefix, 'include', 'node', 'node_api.h'))) process.env.npm_config_nodedir = prefix
}

const cmakeJs = join(dirname(require.resolve('cmake-js/package.json')), 'bin', 'cmake-js')
const haveNinja = spawnSync('ninja', ['--version'], { stdio: 'ignore' }).status === 0

function cmakeJs_(verb, extra = []) {
  const args = [cmakeJs, verb, '--directory', root, ...extra]
  if (haveNinja) args.push('-G', 'Ninja')
  return spawnSync(process.execPath, args, { stdio: 'inherit', cwd: root }).status === 0
}

// configure runs every time so that a changed HETMOE_CUDA takes effect on an existing build folder.
function build(cudaSetting, fresh) {
  const defs = [`--CDHETMOE_CUDA=${cudaSetting}`]
  if (process.env.HETMOE_CUDA_ARCHS) defs.push(`--CDCMAKE_CUDA_ARCHITECTURES=${process.env.HETMOE_CUDA_ARCHS}`)
  if (fresh && !cmakeJs_('clean')) return false
  return cmakeJs_('configure', defs) && cmakeJs_('build', defs)
}

if (build(cuda.toUpperCase(), false)) process.exit(0)
if (cuda === 'auto') {
  console.error('hetmoe: the CUDA build failed (see above); building the CPU-only addon instead')
  if (build('OFF', true)) process.exit(0)
}
console.error('hetmoe: the native addon did not build; see the compiler output above')
process.exit(1)
