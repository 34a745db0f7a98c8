// Flag parsing shared by the commands: node's parseArgs, with errors turned into UsageError.
import { parseArgs, type ParseArgsConfig } from 'node:util'
import { UsageError } from './command.js'

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
  const m = /^\s*(\d+(?:\.\d+)?)\s*(b|k|kb|kib|m|mb|mib|g|gb|gib|t|tb|tib)?\s*$/i.exec(text)
  if (!m) throw new UsageError(`${flag} must be a size such as 20GiB, 512MiB or 4096 (got "${text}")`)
  const unit = (m[2] ?? 'b').toLowerCase()
  const scale: Record<string, number> = { b: 1, k: 2 ** 10, kb: 1e3, kib: 2 ** 10, m: 2 ** 20, mb: 1e6, mib: 2 ** 20, g: 2 ** 30, gb: 1e9, gib: 2 ** 30, t: 2 ** 40, tb: 1e12, tib: 2 ** 40 }
  return Math.round(Number(m[1]) * scale[unit])
}

export function parseIntFlag(text: string | undefined, flag: string, fallback: number, min = 0): number {
  if (text === undefined) return fallback
  const n = Number(text)
  if (!Number.isInteger(n) || n < min) throw new UsageError(`${flag} must be an integer >= ${min} (got "${text}")`)
  return n
}
