// `hetmoe profile`: the exact expert load of an RRE model for a token stream (no model run needed).
import { parseFlags } from '../args.js'
import type { Command } from '../command.js'
import { modelFromFlag, profileFromFlags } from '../../../scheduler/cli-support.js'
import { writeDocument } from '../../../scheduler/document.js'
import { profileShares } from '../../../scheduler/profile.js'

export const command: Command = {
  summary: 'expert load per layer of an RRE model for a token stream (for `hetmoe place`)',
  usage: `Usage: hetmoe profile --model DIR --tokens FILE [--domain D] [--out FILE] [--json]

Routes a token stream through every layer's RRE table and counts the tokens each expert receives.
Exact for RRE models (routes depend only on token ids). Gated models need a profile recorded during
runs (LoadTracker in scheduler/profile.ts).

  --model DIR     the model directory (manifest.msgpack + weights.bin)
  --tokens FILE   token ids: whitespace-separated integers, or raw little-endian int32 if FILE ends in .i32
  --domain D      the domain (name or index) the requests use; default: spread evenly over all domains
  --out FILE      write the profile (msgpack if FILE ends in .msgpack, else JSON)
  --json          print the profile as JSON instead of the summary`,
  async run(argv) {
    const { values } = parseFlags(argv, {
      model: { type: 'string' }, tokens: { type: 'string' }, domain: { type: 'string' }, out: { type: 'string' }, json: { type: 'boolean' },
    })
    const model = modelFromFlag(values.model)
    const profile = profileFromFlags(model, { tokens: values.tokens, domain: values.domain })
    if (values.out) writeDocument(values.out, profile)
    if (values.json) {
      console.log(JSON.stringify(profile, null, 2))
      return 0
    }
    const shares = profileShares(profile)
    console.log(`${profile.model}: ${profile.tokens} tokens (${profile.source})`)
    console.log('layer  active  busiest experts (share of tokens)                      max/mean')
    shares.forEach((s, l) => {
      const active = s.filter((x) => x > 0).length
      const top = [...s.keys()].sort((a, b) => s[b] - s[a] || a - b).slice(0, 6)
      const mean = s.reduce((a, b) => a + b, 0) / Math.max(active, 1)
      const text = top.filter((e) => s[e] > 0).map((e) => `${e} ${(100 * s[e]).toFixed(1)}%`).join(', ')
      console.log(`${String(l).padEnd(7)}${String(active).padEnd(8)}${text.padEnd(55)}${(Math.max(...s) / mean).toFixed(2)}`)
    })
    if (values.out) console.log(`profile written to ${values.out}`)
    return 0
  },
}
