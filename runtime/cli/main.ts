#!/usr/bin/env node
// hetmoe's command line. Each command is one file in ./commands/, loaded only when it is run, so
// `hetmoe info` never pays for what `hetmoe bench` imports.
import { readdirSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { HetmoeError } from '../errors.js'
import { version } from '../version.js'
import { UsageError, type Command } from './command.js'

const commandsDir = fileURLToPath(new URL('./commands/', import.meta.url))

function commandNames(): string[] {
  return readdirSync(commandsDir)
    .filter((f) => f.endsWith('.js'))
    .map((f) => f.slice(0, -3))
    .sort()
}

async function load(name: string): Promise<Command | undefined> {
  if (!/^[a-z][a-z-]*$/.test(name) || !commandNames().includes(name)) return undefined
  return ((await import(`./commands/${name}.js`)) as { command: Command }).command
}

async function help(): Promise<string> {
  const rows: string[] = []
  for (const name of commandNames()) rows.push(`  ${name.padEnd(10)} ${(await load(name))?.summary ?? ''}`)
  return `hetmoe ${version} — heterogeneous Mixture-of-Experts runtime\n\nUsage: hetmoe <command> [options]\n\nCommands:\n${rows.join('\n')}\n\nRun \`hetmoe <command> --help\` for a command's options.`
}

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    console.log(await help())
    return name ? 0 : 2
  }
  if (name === '--version' || name === '-v') {
    console.log(version)
    return 0
  }
  const command = await load(name)
  if (!command) {
    console.error(`hetmoe: unknown command "${name}"\n\n${await help()}`)
    return 2
  }
  // Only right after the command: `hetmoe bench cpu --help` is the bench's own help.
  if (rest[0] === '--help' || rest[0] === '-h') {
    console.log(command.usage)
    return 0
  }
  try {
    return await command.run(rest)
  } catch (err) {
    if (err instanceof UsageError) {
      console.error(`hetmoe ${name}: ${err.message}\n\n${command.usage}`)
      return 2
    }
    if (err instanceof HetmoeError) {
      console.error(`hetmoe ${name}: ${err.message}`)
      if (process.env.HETMOE_DEBUG) console.error(err.stack)
      return 1
    }
    throw err
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code
  },
  (err: unknown) => {
    console.error(err instanceof Error ? (err.stack ?? err.message) : err)
    process.exitCode = 1
  },
)
