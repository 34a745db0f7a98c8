// Flag parsing shared by the commands: node's parseArgs, with errors turned into UsageError.
import { parseArgs, type ParseArgsConfig } from 'node:util'
import { UsageError } from './command.js'
import { parseSize } from '../size.js'

type FlagSpec = NonNullable<ParseArgsConfig['options']>
export type FlagValues<T extends FlagSpec> = {
  [K in keyof T]?: T[K]['type'] extends 'boolean' ? boolean : T[K]['multiple'] extends true ? string[] : string
}

export function parseFlags<T extends FlagSpec>(
  argv: string[],
  options: T,
  allowPositionals = false,
): { values: FlagValues<T>; positionals: string[] } {
  try {
    const parsed = parseArgs({ args: argv, options: { ...options, help: { type: 'boolean', short: 'h' } }, allowPositionals, strict: true })
    return { values: parsed.values as FlagValues<T>, positionals: parsed.positionals }
  } catch (err) {
    throw new UsageError(err instanceof Error ? err.message : String(err))
  }
}

/** Parses sizes such as 20GiB, 512MiB, 1.5G, 4096 (bytes). */
export function parseBytes(text: string, flag: string): number {
  const bytes = parseSize(text)
  if (bytes === undefined) throw new UsageError(`${flag} must be a size such as 20GiB, 512MiB or 4096 (got "${text}")`)
  return bytes
}

export function parseIntFlag(text: string | undefined, flag: string, fallback: number, min = 0): number {
  if (text === undefined) return fallback
  const n = Number(text)
  if (!Number.isInteger(n) || n < min) throw new UsageError(`${flag} must be an integer >= ${min} (got "${text}")`)
  return n
}
