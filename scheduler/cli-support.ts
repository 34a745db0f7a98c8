// Pieces shared by `hetmoe place` and `hetmoe profile`: reading the model and the load the flags
// name, with every error naming the flag it came from.
import { HetmoeError } from '../runtime/errors.js'
import { UsageError } from '../runtime/cli/command.js'
import { readModelFile, type ModelFile } from './model-file.js'
import { profileFromTokens, readProfile, type LoadProfile } from './profile.js'
import { checkTokenIds, readTokenFile } from './token-file.js'

/** Runs `f`, prefixing the message of a HetmoeError it throws with the flag it concerns. */
export function forFlag<T>(flag: string, f: () => T): T {
  try {
    return f()
  } catch (err) {
    if (err instanceof HetmoeError) throw new HetmoeError(err.code, `${flag}: ${err.message}`, { cause: err })
    throw err
  }
}

export function modelFromFlag(dir: string | undefined): ModelFile {
  if (!dir) throw new UsageError('--model DIR is required')
  return forFlag(`--model ${dir}`, () => readModelFile(dir))
}

/** A domain flag: an index when all digits, else a name. */
export function domainFromFlag(text: string | undefined): string | number | undefined {
  if (text === undefined) return undefined
  return /^\d+$/.test(text) ? Number(text) : text
}

export function profileFromFlags(model: ModelFile, flags: { tokens?: string; profile?: string; domain?: string }): LoadProfile {
  if ((flags.tokens === undefined) === (flags.profile === undefined)) throw new UsageError('give exactly one of --tokens FILE or --profile FILE')
  if (flags.profile !== undefined) {
    if (flags.domain !== undefined) throw new UsageError('--domain applies to --tokens only (a profile already fixes its domains)')
    const path = flags.profile
    return forFlag('--profile', () => readProfile(path, { name: model.manifest.name, layers: model.manifest.layers }))
  }
  const path = flags.tokens!
  const tokens = forFlag('--tokens', () => {
    const t = readTokenFile(path)
    checkTokenIds(t, model.manifest.vocabSize, path)
    return t
  })
  const domain = domainFromFlag(flags.domain)
  return forFlag(flags.domain !== undefined ? '--domain' : '--tokens', () => profileFromTokens(model, tokens, domain, `token histogram of ${path}`))
}
