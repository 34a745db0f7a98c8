// `hetmoe bench <kind>`: each bench lives in bench/<kind>.ts and exports `bench: Command`.
import { existsSync, readdirSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import type { Command } from '../command.js'
import { UsageError } from '../command.js'

const benchDir = fileURLToPath(new URL('../../../bench/', import.meta.url))
const kinds = (): string[] =>
  existsSync(benchDir) ? readdirSync(benchDir).filter((f) => /^[a-z-]+\.js$/.test(f)).map((f) => f.slice(0, -3)).sort() : []

export const command: Command = {
  summary: 'throughput benches (run `hetmoe bench` to list them)',
  get usage() {
    return `Usage: hetmoe bench <${kinds().join('|')}> [options]\n\nRun \`hetmoe bench <kind> --help\` for a bench's options.`
  },
  async run(argv) {
    const [kind, ...rest] = argv
    if (!kind) throw new UsageError('which bench?')
    if (!kinds().includes(kind)) throw new UsageError(`unknown bench "${kind}"`)
    const { bench } = (await import(`../../../bench/${kind}.js`)) as { bench: Command }
    if (rest.includes('--help') || rest.includes('-h')) {
      console.log(bench.usage)
      return 0
    }
    return bench.run(rest)
  },
}
